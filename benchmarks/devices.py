"""Step time against device count, and memory per device with and without run.shard_params.

Each device count is a fresh `jaxyard --cpu-devices N run --devices N` process on host (CPU)
devices; the step time is the median over epochs 2..E of the epoch's train_time divided by its
steps (epoch 1 compiles). `--processes 2` adds the 4 devices as a job of 2 processes x 2
(`jaxyard --cpu-devices 2 launch -n 2 -- run`): the same program, its collectives over gloo
between processes. On a machine with fewer cores than devices this measures the overhead of
splitting the batch, not a speed-up. The memory figures are `jaxyard check --json` for a larger
MLP on 4 devices.

    .venv/bin/python benchmarks/devices.py                  # 1, 2, 4 host devices, and 2 processes x 2
    .venv/bin/python benchmarks/devices.py --counts 1 --gpu # the GPU (one device) instead
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py")]


def step_ms(count: int, epochs: int, work: Path, cpu: bool, processes: int = 1) -> float:
    out = work / f"run-{count}-{processes}"
    per_process = count // processes
    devices = ["--cpu-devices", str(per_process)] if cpu else []
    job = ["launch", "-n", str(processes), "--"] if processes > 1 else []
    subprocess.run([*CLI, *devices, *job, "run", "--devices", str(per_process), "--epochs", str(epochs), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = records[0]["step"]
    return 1000 * statistics.median(r["train_time"] for r in records[1:]) / steps


def memory(shard: bool, hidden: str) -> dict:
    cmd = [*CLI, "--cpu-devices", "4", "check", "--devices", "4", "--set", f"model.hidden_dims={hidden}", "--json"]
    if shard:
        cmd += ["--set", "run.shard_params=true"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", default="[4096,4096]", help="the MLP whose memory per device is checked")
    parser.add_argument("--gpu", action="store_true", help="train on the default backend's devices (no --cpu-devices)")
    parser.add_argument("--processes", type=int, default=2, help="also time the largest count as a job of this many processes (1: not)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jaxyard-devices-bench-"))
    try:
        for count in map(int, args.counts.split(",")):
            print(json.dumps({"devices": count, "step_ms": round(step_ms(count, args.epochs, work, not args.gpu), 4)}), flush=True)
        largest = max(map(int, args.counts.split(",")))
        if args.processes > 1 and not args.gpu and largest % args.processes == 0:
            ms = step_ms(largest, args.epochs, work, True, args.processes)
            print(json.dumps({"devices": largest, "processes": args.processes, "step_ms": round(ms, 4)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.gpu:
        for shard in (False, True):
            info = memory(shard, args.hidden)
            print(json.dumps({"shard_params": shard, "parameters": info["parameters"],
                              "step_memory_per_device_MiB": round(info["step_memory_per_device_bytes"] / 2**20, 1),
                              "flops_per_step_per_device": info["flops_per_step_per_device"]}), flush=True)


if __name__ == "__main__":
    main()

"""Kill a run with SIGKILL at several points, resume it, and get exactly the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

RUN = [
    "run",
    "--epochs", "6",
    "--batch-size", "32",
    "--set", "run.save_every=2",
    "--set", "run.warmup_steps=20",
    "--set", "loader.train_size=1000",
    "--set", "loader.features=64",
    "--set", "model.hidden_dims=128,64",
    "--set", "run.keep_latest=10",
]


def cli(*args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "jaxyard.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXYARD_")}
    return {**env, "XDG_CACHE_HOME": str(cache)}  # the compile cache makes the repeated runs quick


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = cli(*RUN, "--out", str(out), env=env)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return out


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("time")} for line in lines]


def final_arrays(run_dir: Path):
    from jaxyard import CheckpointPolicy, Monitor
    from jaxyard.plugins._orbax import OrbaxCheckpointer

    ckpt = OrbaxCheckpointer(run_dir / "checkpoints")
    try:
        return CheckpointPolicy(ckpt, monitor=Monitor()).restore("latest")
    finally:
        ckpt.close()


def _lines(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _saving(run_dir):
    ckpts = run_dir / "checkpoints"
    return ckpts.exists() and any("orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir())


KILL_POINTS = {
    "after the first epoch": lambda d: _lines(d) >= 1,
    "mid-save": _saving,
    "at the end": lambda d: (d / "summary.json").exists() or (d / "training_curves.png.tmp").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, env, reference, point):
    out = tmp_path / "run"
    proc = cli(*RUN, "--out", str(out), env=env)
    deadline = time.monotonic() + 300
    while not KILL_POINTS[point](out):
        assert proc.poll() is None or KILL_POINTS[point](out), "run ended before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL or point == "at the end"  # killed (at the end it may have finished first)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # never a torn line

    resumed = cli("resume", str(out), env=env)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output

    assert metrics(out) == metrics(reference)
    got, want = final_arrays(out), final_arrays(reference)
    assert got.step == want.step
    assert got.arrays.keys() == want.arrays.keys()
    for key in want.arrays:
        np.testing.assert_array_equal(got.arrays[key], want.arrays[key], err_msg=key)


def test_resume_refuses_a_changed_model_naming_the_paths(tmp_path, env, reference):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    config = (out / "config.toml").read_text().replace("hidden_dims = [128, 64]", "hidden_dims = [256, 64]")
    (out / "config.toml").write_text(config)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"}
    proc = cli("resume", str(out), env=env)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in output
    assert "model.hidden.0.kernel" in output and "(64, 256)" in output  # 64 features in, 256 units out
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"}
    assert after == before  # nothing written, changed or deleted (but the lock's record of its last holder)


def test_resume_passes_over_a_damaged_newest_checkpoint(tmp_path, env, reference):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    newest = out / "checkpoints" / str(steps[-1])
    data = max((p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    blob = bytearray(data.read_bytes())
    middle = len(blob) // 2
    blob[middle : middle + 16] = bytes(b ^ 0xFF for b in blob[middle : middle + 16])
    data.write_bytes(blob)
    proc = cli("resume", str(out), env=env)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert f"Skipped damaged checkpoint step {steps[-1]}" in output
    assert metrics(out) == metrics(reference)  # the last epochs were trained again, identically


def test_eval_reads_the_best_and_latest_checkpoints(reference, run_cli):
    import jaxyard

    summary = json.loads((reference / "summary.json").read_text())
    # the latest checkpoint is the end of training: the same test numbers as the run printed
    latest = jaxyard.evaluate(reference, checkpoint="latest")
    assert (latest.step, latest.test_loss, latest.test_acc) == (192, summary["test"]["test_loss"], summary["test"]["test_acc"])
    # best: the saved step whose epoch has the lowest val_loss (run.monitor), not the latest
    saved = {int(p.name) for p in (reference / "checkpoints").iterdir() if p.name.isdigit()}
    expected = min((r for r in metrics(reference) if r["step"] in saved), key=lambda r: r["val_loss"])
    best = jaxyard.evaluate(reference, checkpoint="best")
    assert (best.step, best.epoch) == (expected["step"], expected["epoch"])
    result = run_cli(["eval", reference, "--checkpoint", "128"])  # 32 steps per epoch: step 128 ends epoch 4
    assert result.exit_code == 0, result.stderr
    assert "at checkpoint step 128 (epoch 4, 128)" in result.stdout

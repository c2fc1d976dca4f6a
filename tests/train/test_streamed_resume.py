"""Streamed runs in steps: a resumable stream (grain's) validates and checkpoints mid-epoch, and a
run killed there resumes to exactly the uninterrupted result; a stream that cannot say where it
stands is refused run.steps / run.eval_every in one line."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import LOCAL, PAUSE, as_options, assert_one_line_error, clean_environ, wait_for

# 96 training rows in batches of 8 (12 an epoch) for 30 steps, validated every 5 (a round ends mid-epoch),
# saved every 2 rounds (steps 10, 20, 30: 10 and 20 mid-epoch), constant warmup of 2 steps
SETS = ["model.hidden_dims=32", "run.warmup_steps=2", "run.eval_every=5", "run.save_every=2", "run.keep_latest=10", "loader.prefetch=0"]


def grain_run(data, out):
    return ["run", "--loader", "grain", "--set", f"loader.path={data}", "--batch-size", "8", "--steps", "30", *as_options(SETS),
            "--out", str(out)]


def metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("time")} for line in lines]


def checkpoints(run_dir):
    from jaxyard.plugins._orbax import OrbaxCheckpointer

    ckpt = OrbaxCheckpointer(run_dir / "checkpoints")
    try:
        return {step: ckpt.load(step) for step in ckpt.steps()}
    finally:
        ckpt.close()


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_bit_identical(tmp_path, run_cli):
    """SIGKILL after validation 4 (checkpoints at steps 10 and 20 asked for, both mid-epoch), then
    ``resume``: every record, the test metrics and the final state equal an uninterrupted run's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    data = tmp_path / "data.npz"
    np.savez(data, x_train=x[:96], y_train=y[:96], x_val=x[96:108], y_val=y[96:108], x_test=x[108:], y_test=y[108:])
    reference = tmp_path / "reference"
    result = run_cli(grain_run(data, reference))
    assert result.exit_code == 0, result.output
    positions = {step: r.meta["stream"] for step, r in checkpoints(reference).items()}
    assert positions == {10: {"epoch": 1, "state": {"next_index": 10}}, 20: {"epoch": 2, "state": {"next_index": 8}},
                         30: {"epoch": 3, "state": {"next_index": 6}}}

    out, pauses = tmp_path / "run", tmp_path / "pauses"
    pauses.mkdir()
    env = clean_environ(PAUSE_DIR=str(pauses), PAUSE_AT="epoch-4")
    proc = subprocess.Popen([sys.executable, "-m", "jaxyard.cli", "--strict-plugins", "--plugin", str(PAUSE), *grain_run(data, out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for((pauses / "paused-epoch-4").exists, proc, what="validation 4")
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "summary.json").exists()

    result = run_cli(["resume", out])
    assert result.exit_code == 0, result.output
    assert "Resuming after validation 2 (checkpoint step 10)" in result.output or \
        "Resuming after validation 4 (checkpoint step 20)" in result.output, result.output
    assert metrics(out) == metrics(reference)
    assert json.loads((out / "summary.json").read_text())["test"] == json.loads((reference / "summary.json").read_text())["test"]
    got, want = checkpoints(out)[30], checkpoints(reference)[30]
    assert got.arrays.keys() == want.arrays.keys()
    for key in want.arrays:
        np.testing.assert_array_equal(got.arrays[key], want.arrays[key], err_msg=key)


@pytest.mark.parametrize("option", [["--steps", "10"], ["--epochs", "1", "--set", "run.eval_every=3"]], ids=["steps", "eval_every"])
def test_a_stream_without_a_position_is_refused_steps(run_cli, tmp_path, option):
    """A generator's stream (tests/plugins_local/streams.py) cannot resume mid-epoch: one line saying why and what to use."""
    result = run_cli(["--plugin", LOCAL / "streams.py", "run", "--loader", "stream-of", "--task", "regression",
                      "--set", "loader.source=regression", *option, "--out", tmp_path / "run"])
    assert_one_line_error(result, "loader 'stream-of' streams its batches and cannot report its position in them",
                          "resumable=False", "use run.epochs, an in-memory loader, or a resumable stream (--loader grain")

"""Kill a run with SIGKILL at several points, resume it, and get exactly the uninterrupted result."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import PAUSE, as_options, clean_environ, tiny, wait_for

pytestmark = pytest.mark.xdist_group("resume")  # one worker computes the module's reference run

# The tiny workload for 6 epochs in batches of 16 (7 steps an epoch), saved every 2 epochs and kept.
RUN = ["run", "--epochs", "6", "--batch-size", "16", *as_options(tiny("run.save_every=2", "run.keep_latest=10"))]
# A regression on the regression loader (100 examples of 16 features, one float target, Huber loss) in steps:
# 30 batches of 16 validated every 5 (a round ends mid-epoch: 7 batches an epoch), saved every 2 rounds.
REGRESSION_RUN = ["run", "--task", "regression", "--loader", "regression", "--steps", "30", "--batch-size", "16",
                  *as_options(tiny("run.eval_every=5", "run.save_every=2", "run.keep_latest=10", "task.loss=huber", "task.delta=0.5",
                                   without=["loader.classes"]))]

# A language model on the tokens loader (100 windows of 8 tokens, the mlp reading each token), 6 epochs.
NEXT_TOKEN_RUN = ["run", "--task", "next_token", "--loader", "tokens", "--epochs", "6", "--batch-size", "16",
                  *as_options(tiny("run.save_every=2", "run.keep_latest=10", "loader.train_size=100", "loader.val_size=20",
                                   "loader.test_size=20", "loader.seq_len=8", without=["loader"]))]


def cli(*args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "jaxyard.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


@pytest.fixture
def env():
    return clean_environ()  # the suite's compile cache makes the repeated runs quick


def in_process(*args) -> str:
    """``jaxyard ARGS`` in this process (what needs no real process: the references, the resumes;
    the suite's XLA flags are the subprocesses', so the numbers are the same); its output."""
    from click.testing import CliRunner

    from jaxyard.cli import cli as group

    result = CliRunner().invoke(group, [str(a) for a in args])
    assert result.exit_code == 0, (result.stdout[-3000:], result.stderr[-3000:], result.exception)
    return result.stdout


def uninterrupted(tmp_path_factory, run):
    out = tmp_path_factory.mktemp("ref") / "run"
    in_process(*run, "--out", out)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return uninterrupted(tmp_path_factory, RUN)


@pytest.fixture(scope="module")
def regression_reference(tmp_path_factory):
    return uninterrupted(tmp_path_factory, REGRESSION_RUN)


@pytest.fixture(scope="module")
def next_token_reference(tmp_path_factory):
    return uninterrupted(tmp_path_factory, NEXT_TOKEN_RUN)


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


# Where the run is held and killed (tests/plugins_local/pause.py), and which run:
# - the regression in steps, after its fourth validation: it resumes from a checkpoint taken mid-epoch
#   (step 10 or 20, whichever was whole) and must draw the batches an uninterrupted run draws;
# - the language model (token sums; 7 batches an epoch too), its first save (epoch 2) written in full but
#   not renamed into place;
# - the classification, after summary.json, before the end-of-run plugins.
KILL_POINTS = {
    "steps, between validations": ("regression", "epoch-4"), "mid-save": ("next_token", "publish-1"), "at the end": ("classification", "end"),
}
RUNS = {"regression": (REGRESSION_RUN, "regression_reference"), "classification": (RUN, "reference"),
        "next_token": (NEXT_TOKEN_RUN, "next_token_reference")}


def kill(run, out, env, at):
    """Start ``run`` into ``out``, held at the pause point ``at``, and SIGKILL it there."""
    pauses = out.parent / "pauses"
    pauses.mkdir()
    held = {**env, "PAUSE_DIR": str(pauses), "PAUSE_AT": at}
    proc = cli("--strict-plugins", "--plugin", str(PAUSE), *run, "--out", str(out), env=held)
    try:
        wait_for((pauses / f"paused-{at}").exists, proc, what=f"the kill point ({at})")
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # never a torn line


def assert_resumes_to(out, reference, env):
    """`jaxyard resume out` ends as ``reference`` did, bit for bit: every epoch's record (less its
    times), the test metrics, and the final state's arrays."""
    output = in_process("resume", out)

    assert metrics(out) == metrics(reference)
    assert json.loads((out / "summary.json").read_text())["test"] == json.loads((reference / "summary.json").read_text())["test"]
    got, want = final_arrays(out), final_arrays(reference)
    assert got.step == want.step
    assert got.arrays.keys() == want.arrays.keys()
    for key in want.arrays:
        np.testing.assert_array_equal(got.arrays[key], want.arrays[key], err_msg=key)
    return output


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, env, request, point):
    task, at = KILL_POINTS[point]
    run, fixture = RUNS[task]
    reference = request.getfixturevalue(fixture)
    out = tmp_path / "run"
    kill(run, out, env, at)
    if point == "mid-save":  # step 14 (epoch 2) was being saved, and no step is finished
        entries = [p.name for p in (out / "checkpoints").iterdir()]
        assert not [n for n in entries if n.isdigit()] and [n for n in entries if n.startswith("14")], entries
    output = assert_resumes_to(out, reference, env)
    if task == "regression":  # from a checkpoint taken mid-epoch (7 batches an epoch), whichever was whole when killed
        assert "Resuming after validation 2 (checkpoint step 10)" in output or "Resuming after validation 4 (checkpoint step 20)" in output, output
        assert list(metrics(out)[0]) == ["epoch", "step", "lr", *(f"{s}_{m}" for s in ("train", "val") for m in ("loss", "mse", "mae", "r2"))]


def test_resume_refuses_a_changed_model_naming_the_paths(tmp_path, env, reference):
    """A deliberate change (config.toml edited by hand is refused before: tests/store/test_config_binding.py)
    that the checkpoint cannot hold: the arrays that differ are named, and the change is not recorded."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    assert "hidden_dims = [32]" in (out / "config.toml").read_text()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"}
    proc = cli("resume", str(out), "--set", "model.hidden_dims=[48]", env=env)
    output, _ = proc.communicate()
    assert proc.returncode != 0
    assert "Traceback" not in output
    assert "model.hidden.0.kernel" in output and "(16, 48)" in output  # 16 features in, 48 units out
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"}
    assert after == before  # nothing written, changed or deleted (but the lock's record of its last holder)


def test_resume_passes_over_a_damaged_newest_checkpoint(tmp_path, env, reference):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    newest = out / "checkpoints" / str(steps[-1])
    # every data file of the step (tensorstore's d/ folders): the arrays' bytes are damaged whatever
    # the files' sizes (the largest file of a small state may be metadata a restore does not read)
    data = [p for p in (newest / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data, sorted((newest / "state").rglob("*"))
    for path in data:
        blob = bytearray(path.read_bytes())
        middle = len(blob) // 2
        blob[middle : middle + 16] = bytes(b ^ 0xFF for b in blob[middle : middle + 16])
        path.write_bytes(blob)
    with pytest.warns(UserWarning, match=f"checkpoint step {steps[-1]} in .* was damaged .* moved it to {steps[-1]}.damaged and saving again"):
        output = in_process("resume", out)
    assert f"Skipped damaged checkpoint step {steps[-1]}" in output
    assert metrics(out) == metrics(reference)  # the last epochs were trained again, identically


def test_eval_reads_the_best_and_latest_checkpoints(reference, run_cli):
    import jaxyard

    summary = json.loads((reference / "summary.json").read_text())
    # the latest checkpoint is the end of training: the same test numbers as the run printed
    latest = jaxyard.evaluate(reference, checkpoint="latest")
    assert (latest.step, latest.test_loss, latest.test_acc) == (42, summary["test"]["test_loss"], summary["test"]["test_acc"])
    # best: the saved step whose epoch has the lowest val_loss (run.monitor), not the latest
    saved = {int(p.name) for p in (reference / "checkpoints").iterdir() if p.name.isdigit()}
    expected = min((r for r in metrics(reference) if r["step"] in saved), key=lambda r: r["val_loss"])
    best = jaxyard.evaluate(reference, checkpoint="best")
    assert (best.step, best.epoch) == (expected["step"], expected["epoch"])
    result = run_cli(["eval", reference, "--checkpoint", "28"])  # 7 steps per epoch: step 28 ends epoch 4
    assert result.exit_code == 0, result.stderr
    assert "at checkpoint step 28 (epoch 4, 28)" in result.stdout

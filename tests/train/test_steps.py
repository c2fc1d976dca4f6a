"""Step-based runs: run.steps (a budget that need not be whole epochs), validation every
run.eval_every steps, and run.shuffle = false."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxyard
from jaxyard.core.train import steps as S
from jaxyard.core.train.build import build
from jaxyard.core.train.loop import make_loop

from helpers import as_options, assert_one_line_error, tiny

TINY = as_options(tiny())  # 100 training examples: 7 steps an epoch in batches of 16


def equal(a, b):
    """Two states' arrays equal, random keys by their data."""
    def data(x):
        return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(data(x)), np.asarray(data(y))), a, b)


def records(out):
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("time")} for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_steps_and_eval_every_validate_that_often(run_cli, tmp_path):
    """--steps 25 --set run.eval_every=10: validations at steps 10, 20 and 25 (the budget is not a
    whole number of epochs of 7 steps), the schedule spans 25 steps, the report counts steps."""
    out = tmp_path / "run"
    result = run_cli(["run", *TINY, "--batch-size", "16", "--steps", "25", "--set", "run.eval_every=10", "--checkpointer", "none",
                      "--set", "run.curves=false", "--out", out])
    assert result.exit_code == 0, result.stderr
    history = records(out)
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 10), (2, 20), (3, 25)]
    assert "Step 20/25 (validation 2/3)" in result.stdout and "  Steps: 25 steps, validating every 10 steps" in result.stdout
    assert history[-1]["lr"] < history[0]["lr"]  # the cosine decays to the 25th step
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 3


def config(**run):
    sets = tiny("run.checkpointer=none", "model.dropout_rate=0.0")
    return jaxyard.resolve_config(jaxyard.build_registry(), jaxyard.load_settings(), options={"batch_size": 16, **run}, sets=sets)


def test_rounds_of_an_epochs_steps_are_the_epochs():
    """Validating every 7 steps (an epoch of 100 examples in batches of 16) trains exactly what
    whole epochs do: the same batches in the same order, the same numbers."""
    def train(**run):
        built = build(config(epochs=2, **run))
        loop = make_loop(built)
        return [jax.device_get(loop.train_epoch(r)) for r in (1, 2)], built.state

    (by_epoch, state), (by_steps, stepped) = train(), train(eval_every=7)
    assert by_epoch == by_steps
    equal(state, stepped)


def test_without_shuffle_the_first_step_reads_the_first_rows():
    built = build(config(steps=1, eval_every=1, shuffle=False))
    before = jax.tree.map(jnp.copy, built.state)
    make_loop(built).train_epoch(1)
    train = jax.tree.map(lambda a: a[:16], (built.data.train.x, built.data.train.y))
    step = jax.jit(lambda state, batch, mask: S._step(built.train_graphdef, None, built.task_of, state, {}, batch, mask))
    expected, _ = step(before, train, jnp.ones(16, jnp.float32))
    equal(built.state, expected)


@pytest.mark.parametrize("args", [["--steps", "5"], ["--set", "run.eval_every=5"]])
def test_steps_on_a_streamed_loader_are_one_line(run_cli, tmp_path, args):
    from helpers import LOCAL

    result = run_cli(["--plugin", LOCAL / "shapes.py", "run", "--loader", "stream", *args, "--out", tmp_path / "x"])
    assert_one_line_error(result, "loader 'stream' streams its batches", "use run.epochs")


def test_a_resume_that_would_move_its_checkpoint_off_a_validation_is_refused(run_cli, tmp_path):
    """Checkpointed after 10 of 20 steps, validating every 5: another run.eval_every that does not
    validate after step 10 would train batches twice or skip them; refused, nothing written."""
    out = tmp_path / "run"
    result = run_cli(["run", *TINY, "--batch-size", "16", "--steps", "20", "--set", "run.eval_every=5", "--set", "run.save_every=2",
                      "--set", "run.curves=false", "--out", out])
    assert result.exit_code == 0, result.stderr
    for step in (p for p in (out / "checkpoints").iterdir() if p.name.isdigit() and int(p.name) > 10):
        import shutil

        shutil.rmtree(step)
    (out / "summary.json").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"}
    assert_one_line_error(run_cli(["resume", out, "--set", "run.eval_every=4"]),
                          "run.eval_every 5 -> 4: checkpoint step 10 ends validation 2 after 10 batches, but the changed run's validation 2 "
                          "ends after 8 (its validations near it: after 8 and 12)", "resume without that change")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"} == before
    result = run_cli(["resume", out, "--set", "run.eval_every=10"])  # validation 1 after 10 batches: not where it was saved either
    assert result.exit_code != 0 and "ends validation 2 after 10 batches" in result.stderr
    result = run_cli(["resume", out])
    assert result.exit_code == 0, result.stderr
    assert [r["step"] for r in records(out)] == [5, 10, 15, 20]


def test_rounds_end_on_whole_updates_when_accumulating(run_cli, tmp_path):
    """With run.accumulate_steps = 4 a round ending after 10 batches would validate between the
    micro-batches of one update (and two rounds would share a step): refused before training."""
    result = run_cli(["run", *TINY, "--batch-size", "8", "--set", "run.accumulate_steps=4", "--set", "run.eval_every=10", "--out", tmp_path / "a"])
    assert_one_line_error(result, "run.eval_every = 10 is not a multiple of run.accumulate_steps = 4", "use a multiple of 4, e.g. 12")
    assert not (tmp_path / "a").exists()

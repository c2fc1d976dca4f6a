"""Sweeps: traced hyperparameters compile once per static group; `jaxyard sweep` on an Optuna study."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxyard.core.errors import UsageError
from jaxyard.core.experiments import sweep as S
from jaxyard.core.registry.config import resolve_config
from jaxyard.core.registry.loading import build_registry
from jaxyard.core.registry.settings import Settings
from jaxyard.core.train.build import make_schedule, make_tx
from jaxyard.core.train.engine import train
from jaxyard.core.train.traced import Programs, traceable, with_values

from helpers import as_options, assert_one_line_error, compiled_during, tiny

optuna = pytest.importorskip("optuna")


def sets(*extra):
    """The tiny workload for 2 epochs, as --set options (``extra`` overrides)."""
    return as_options(tiny("run.epochs=2", *extra))


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def config(registry, *extra):
    return resolve_config(registry, Settings(), sets=tiny("run.epochs=2", *extra))


# --- hyperparameters as inputs -------------------------------------------------------------------


@pytest.mark.slow
def test_runs_differing_in_traced_values_and_seed_compile_once_and_match_a_single_run(registry, tmp_path):
    programs = Programs(["run.learning_rate", "optimizer.b2", "scheduler.alpha"])
    first = train(config(registry, "run.learning_rate=0.001"), out_dir=tmp_path / "a", programs=programs)
    other = config(registry, "run.learning_rate=0.003", "optimizer.b2=0.99", "scheduler.alpha=0.1", "run.seed=4")
    second, compiled = compiled_during(lambda: train(other, out_dir=tmp_path / "b", programs=programs))
    assert programs.compiles == 1 and compiled == [], compiled  # not one XLA program for the second configuration
    alone = train(other, out_dir=tmp_path / "alone")  # every value a constant, as `run` compiles it
    for shared, single in zip(second.history, alone.history, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert shared[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    assert first.history[-1]["val_loss"] != second.history[-1]["val_loss"]

    programs.compiles = 0  # a structural change (an untraced value) is a new static group: one more program
    train(config(registry, "optimizer.weight_decay=0.01"), out_dir=tmp_path / "c", programs=programs)
    assert programs.compiles == 1


TRACED_CASES = [(kind, name) for kind in ("optimizer", "scheduler") for name in
                {"optimizer": ("adam", "adamw", "rmsprop", "lion", "lamb", "adafactor"), "scheduler": ("cosine",)}[kind]]


@pytest.mark.parametrize("kind,name", TRACED_CASES)
def test_each_traced_builtin_parameter_is_an_input_giving_the_constant_numbers(registry, kind, name):
    cfg = config(registry, f"run.{kind}={name}", "run.warmup_steps=3")
    values = {k: v for k, v in traceable(cfg).items() if k.startswith((kind, "run."))}
    assert len(values) >= 2, values  # the learning rate and at least one of the component's own
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    grads = {"w": jnp.cos(params["w"] * 3.0)}

    def updates(tx):
        state = tx.init(params)
        for _ in range(4):
            u, state = tx.update(grads, state, params)
        return u["w"]

    constant = updates(make_tx(cfg, make_schedule(cfg, 10)[0]))

    @jax.jit
    def traced(inputs):
        traced_cfg = with_values(cfg, inputs)
        return updates(make_tx(traced_cfg, make_schedule(traced_cfg, 10, check=False)[0]))

    inputs = {k: jnp.float32(v) for k, v in values.items()}
    np.testing.assert_allclose(traced(inputs), constant, rtol=2e-5, atol=1e-7)
    bumped = {k: v * 0.5 for k, v in inputs.items()}
    assert not np.allclose(traced(bumped), constant)  # the inputs reach the update


# --- the search space ----------------------------------------------------------------------------


@pytest.mark.parametrize("text,kind,values", [
    ("1e-4,3e-4,1e-3", "list", ("1e-4", "3e-4", "1e-3")),
    ("0-3", "list", ("0", "1", "2", "3")),
    ("[64],[128,64]", "list", ("[64]", "[128,64]")),
    ("choice(adam,sgd)", "choice", ("adam", "sgd")),
])
def test_lists_ranges_and_choices(text, kind, values):
    dim = S.parse_spec("x.y", text)
    assert (dim.kind, dim.values) == (kind, values)


def test_distributions_and_fixed_values():
    assert S.parse_spec("run.learning_rate", "log(1e-5,1e-2)") == S.Dim("run.learning_rate", "log", low=1e-5, high=1e-2)
    assert S.parse_spec("model.width", "int(16,256)").kind == "int"
    for fixed in ("0.001", "[64,32]", "3-3", "adam"):
        assert S.parse_spec("x.y", fixed) is None


@pytest.mark.parametrize("text,fragment", [
    ("log(0,1)", "needs LOW > 0"),
    ("uniform(2,1)", "LOW must be below HIGH"),
    ("int(1.5,4)", "two integers"),
    ("log(1e-4)", "takes two numbers"),
    ("1,1", "listed twice"),
    ("5-2", "is empty"),
])
def test_bad_specs_are_one_line(text, fragment):
    with pytest.raises(UsageError, match=fragment):
        S.parse_spec("run.learning_rate", text)



# --- the task's metrics: the objective's direction and the leaderboard ----------------------------

REGRESSION = {"loss": "min", "mse": "min", "r2": "max"}


def spec(monitor="val_loss", metrics=None):
    return S.SweepSpec((S.Dim("run.learning_rate", "list", values=("1e-3", "1e-2")),), "grid", 2, "none", monitor, 2, None, "sweep", 0,
                       metrics)


def test_the_objectives_direction_is_the_tasks():
    assert (spec("val_r2", REGRESSION).direction, spec("val_mse", REGRESSION).direction) == ("maximize", "minimize")
    assert (spec("val_r2", REGRESSION).headline, spec().headline, spec(metrics={"loss": "min"}).headline) == ("test_mse", "test_acc", "test_loss")
    data = json.loads(json.dumps(spec("val_r2", REGRESSION).to_json()))
    assert data["metrics"] == REGRESSION and data["direction"] == "maximize"
    assert S.SweepSpec.from_json(data) == spec("val_r2", REGRESSION)
    del data["metrics"]  # a sweep.json of 0.2: classification's directions
    old = S.SweepSpec.from_json({**data, "monitor": "val_acc"})
    assert (old.metrics, old.direction, old.headline) == (None, "maximize", "test_acc")
    with pytest.raises(UsageError, match="'val_acc' is not a metric of this run"):
        spec("val_acc", REGRESSION).direction  # noqa: B018


def test_trial_lines_and_leaderboard_show_the_tasks_headline_test_metric(tmp_path):
    sweep = spec("val_r2", REGRESSION)
    (tmp_path / S.SPEC).write_text(json.dumps(sweep.to_json()))
    lines = [{"trial": n, "state": "complete", "params": {"run.learning_rate": lr}, "run_dir": f"trials/{n:04d}", "value": r2,
              "best": {"epoch": 2, "val_r2": r2}, "test": {"test_loss": 0.1, "test_mse": mse, "test_r2": r2}, "seconds": 1.0}
             for n, lr, r2, mse in ((0, 1e-3, 0.8, 0.2), (1, 1e-2, 0.9, 0.1))]
    (tmp_path / S.RESULTS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert S.trial_line(lines[1], sweep) == "Trial   1 complete  learning_rate=0.01  val_r2 0.9000 (epoch 2)  test_mse 0.1000  1.0 s"
    headers, rows, best = S.leaderboard(tmp_path)
    assert headers == ["trial", "state", "learning_rate", "val_r2", "epoch", "test_mse", "seconds", "run_dir"]
    assert [row[0] for row in rows] == [1, 0] and best["trial"] == 1 and rows[0][5] == 0.1  # higher r2 first
    classification = dict(lines[0], test={"test_loss": 0.4, "test_acc": 0.88})
    assert S.trial_line(classification, spec()).endswith("(epoch 2)  test_acc 0.8800  1.0 s")


# --- jaxyard sweep -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_grid_sweep_ranks_its_trials_and_the_best_reruns_alone(run_cli, tmp_path, registry):
    out = tmp_path / "sweep"
    result = run_cli(["sweep", "--lr", "1e-3,1e-2", "--seed", "0-1", "--prune", "none", "--out", str(out), *sets()])
    assert result.exit_code == 0, result.output
    assert "4 complete, 0 pruned, 0 failed; 1 training program compiled" in result.stdout
    lines = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
    assert sorted((x["params"]["run.learning_rate"], x["params"]["run.seed"]) for x in lines) == [
        (0.001, 0), (0.001, 1), (0.01, 0), (0.01, 1)]
    assert all(x["state"] == "complete" and len(x["final"]) and x["test"]["test_acc"] >= 0 for x in lines)
    best = min(lines, key=lambda x: x["value"])
    assert f"Best: trial {best['trial']} (val_loss {best['value']:.4f})" in result.stdout
    board = result.stdout.split("Leaderboard")[1].splitlines()[2:6]
    assert [int(row.split()[0]) for row in board] == [x["trial"] for x in sorted(lines, key=lambda x: x["value"])]
    from PIL import Image

    with Image.open(out / "sweep.png") as png:
        assert png.format == "PNG" and png.size[0] > 400
    rerun = train(resolve_config(registry, Settings(), config_file=str(out / best["run_dir"] / "config.toml")), out_dir=tmp_path / "alone")
    assert rerun.history[-1]["val_loss"] == pytest.approx(best["final"]["val_loss"], rel=1e-5)
    study = optuna.load_study(study_name="sweep", storage=S.storage_of(out, S.load_spec(out)))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
    assert_one_line_error(run_cli(["sweep", "--resume", str(out), "--lr", "5"]), "--lr cannot change a sweep being resumed")
    again = run_cli(["sweep", "--resume", str(out)])  # finished: nothing runs, the leaderboard again
    assert again.exit_code == 0 and "0 complete, 0 pruned, 0 failed" in again.stdout and len(study.trials) == 4


def test_a_diverging_trial_fails_alone_and_pruned_trials_keep_their_metrics(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: optuna.pruners.ThresholdPruner(upper=1.0))
    out, db = tmp_path / "sweep", f"sqlite:///{tmp_path / 'studies.db'}"  # any Optuna storage: a database here
    result = run_cli(["sweep", "--optimizer", "sgd", "--lr", "0.05,1e9", "--storage", db, "--out", str(out), *sets("run.epochs=3")])
    assert result.exit_code == 0, result.output
    states = sorted(t.state.name for t in optuna.load_study(study_name="sweep", storage=db).trials)
    assert states == ["FAIL", "PRUNED"] and not (out / S.STUDY_FILE).exists()
    lines = {x["params"]["run.learning_rate"]: x for x in map(json.loads, (out / S.RESULTS).read_text().splitlines())}
    assert lines[1e9]["state"] == "failed" and "training diverged" in lines[1e9]["error"]
    pruned = lines[0.05]
    assert pruned["state"] == "pruned" and len(pruned["final"]) and pruned["final"]["epoch"] < 3, pruned
    assert "pruned by the sweep" in pruned["stop_reason"]


def test_search_needs_a_budget_and_bad_values_are_caught_before_any_trial(run_cli, tmp_path):
    result = run_cli(["sweep", "--lr", "log(1e-4,1e-2)", "--out", str(tmp_path / "a"), *sets()])
    assert_one_line_error(result, "needs --trials N")
    result = run_cli(["sweep", "--set", "optimizer.b2=0.9,1.5", "--out", str(tmp_path / "b"), *sets()])
    assert_one_line_error(result, "sweep optimizer.b2=1.5", "'b2' must be < 1.0: 1.5")
    result = run_cli(["sweep", "--lr", "log(1e-4,1e-2)", "--sampler", "grid", "--trials", "3", "--out", str(tmp_path / "c"), *sets()])
    assert_one_line_error(result, "--sampler grid", "run.learning_rate is a distribution")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = run_cli(["sweep", "--resume", str(tmp_path)])
    assert_one_line_error(result, "is not a sweep directory")
    result = run_cli(["sweep", "--lr", "1e-3,1e-2", "--devices", "2", "--out", str(tmp_path / "d"), *sets()])
    assert_one_line_error(result, "sweep run.learning_rate=1e-3: run.devices = 2, but this process has 1")  # before any trial
    result = run_cli(["sweep", "--lr", "1e-3,1e-2", "--storage", "bogus://x", "--out", str(tmp_path / "e"), *sets()])
    assert_one_line_error(result, "--storage bogus://x: NoSuchModuleError")
    assert not any((tmp_path / name).exists() for name in "abcde")  # nothing written by a refused sweep


# The tolerance docs/sweeps.md ("Vectorized") states: a vmapped matrix product may add its terms in
# another order, so a member equals its sequential trial up to float32 rounding, not bit for bit.
# Its first epoch (same keys, shuffle, dropout masks, learning rates) agrees to rounding; training then
# amplifies the last bits as it amplifies any (a ReLU's derivative flips at 0; a high learning rate is
# chaotic): on the default workload, 10 epochs, losses up to 2e-3 apart at lr 3e-3 and 10% at lr 1e-2,
# about as much as moving the sequential trial's initial weights by one ulp. A short stable run stays within DRIFT.
FIRST_EPOCH = 1e-5  # relative, every metric of epoch 1
DRIFT = 1e-4  # relative, the final and test metrics of the tiny workload's few epochs (measured: < 1e-6)


@pytest.mark.slow
def test_vectorized_members_equal_sequential_trials_and_one_diverging_member_leaves_alone(run_cli, tmp_path):
    """With gradients of 2 batches an update and an odd number of batches an epoch (the last group partial)."""
    def sweep(mode):
        out = tmp_path / mode
        result = run_cli(["sweep", "--optimizer", "sgd", "--lr", "0.05,0.2,1e9", "--seed", "1", "--prune", "none",
                          "--vectorize", mode, "--out", str(out), *sets("run.epochs=3", "run.accumulate_steps=2")])
        assert result.exit_code == 0, result.output
        lines = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
        return {x["params"]["run.learning_rate"]: x for x in lines}, result.stdout, out

    def epochs(out, line):
        return [json.loads(x) for x in (out / line["run_dir"] / "metrics.jsonl").read_text().splitlines()]

    (on, text, on_dir), (off, _, off_dir) = sweep("on"), sweep("off")
    assert "vectorized" in text and "1 training program compiled" in text  # one vmapped program for the group
    assert on.keys() == off.keys() and len(on) == 3
    for point, line in off.items():
        assert on[point]["state"] == line["state"], point
        if line["state"] == "failed":
            assert point == 1e9 and "training diverged" in on[point]["error"]
            continue
        mine, theirs = epochs(on_dir, on[point]), epochs(off_dir, line)
        assert [e["lr"] for e in mine] == [e["lr"] for e in theirs]  # the same schedule, exactly
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):  # the same keys and data: rounding only
            assert mine[0][key] == pytest.approx(theirs[0][key], rel=FIRST_EPOCH, abs=1e-6), (point, key)
        for key in ("train_loss", "val_loss", "val_acc"):
            assert on[point]["final"][key] == pytest.approx(line["final"][key], rel=DRIFT, abs=1e-6), (point, key)
        assert on[point]["test"]["test_loss"] == pytest.approx(line["test"]["test_loss"], rel=DRIFT, abs=1e-6)


# --- a task's traced parameter -------------------------------------------------------------------

# The tiny workload as a regression (its loader's 100 examples of 16 features, one float target)
# under the Huber loss, whose delta (a traced task parameter) the sweep below varies.
DELTAS = ("0.05", "0.1", "0.2", "0.3", "0.5", "1", "2", "4")
HUBER = tiny("run.epochs=2", "run.task=regression", "run.loader=regression", "task.loss=huber", without=["loader.classes"])


@pytest.mark.slow
def test_a_sweep_of_a_traced_task_parameter_compiles_one_program_and_each_value_trains_differently(run_cli, tmp_path, registry):
    def sweep(mode):
        out = tmp_path / mode
        result = run_cli(["sweep", "--set", f"task.delta={','.join(DELTAS)}", "--prune", "none", "--vectorize", mode, "--out", str(out),
                          *as_options(HUBER)])
        assert result.exit_code == 0, result.output
        assert "8 complete, 0 pruned, 0 failed; 1 training program compiled" in result.stdout  # with --vectorize on: one vmapped
        lines = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
        return {x["params"]["task.delta"]: x for x in lines}, out

    (off, out), (on, _) = sweep("off"), sweep("on")
    assert sorted(off) == sorted(on) == sorted(map(float, DELTAS))
    # delta reaches the training, not only the reported loss: the mean squared error (which does not use it) differs
    assert len({x["final"]["val_mse"] for x in off.values()}) == len({x["test"]["test_mse"] for x in off.values()}) == 8
    for delta, line in off.items():
        for key in ("train_loss", "val_loss", "val_mse", "val_r2"):
            assert on[delta]["final"][key] == pytest.approx(line["final"][key], rel=DRIFT, abs=1e-6), (delta, key)
        assert on[delta]["test"]["test_mse"] == pytest.approx(line["test"]["test_mse"], rel=DRIFT, abs=1e-6), delta
    # the shared program's input gives the numbers of a run compiled with delta as a constant
    trial = off[0.3]
    alone = train(resolve_config(registry, Settings(), config_file=str(out / trial["run_dir"] / "config.toml"), sets=["run.checkpointer=none"]),
                  out_dir=tmp_path / "alone")
    assert "delta = 0.3" in (out / trial["run_dir"] / "config.toml").read_text()
    for key in ("train_loss", "val_loss", "val_mse"):
        assert alone.history[-1][key] == pytest.approx(trial["final"][key], rel=1e-5, abs=1e-6), key

"""Gradient accumulation, weight averaging, the profiler and the epoch progress bar."""


import jax
import numpy as np
import pytest

import jaxyard
from jaxyard.core.train.build import build
from jaxyard.core.train.loop import make_loop
from jaxyard.core.train.steps import merged  # (model, optimizer) of a built run's state

from helpers import as_options, tiny

TINY = tiny("model.dropout_rate=0.0")


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(strict=True)


def config(registry, *sets, **run):
    options = {"epochs": 3, "batch_size": 32, **run}
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options, sets=tiny("model.dropout_rate=0.0", *sets))


def metrics(result):
    return [{k: v for k, v in r.items() if k not in ("step", "train_time", "val_time")} for r in result.history]


def test_accumulated_small_batches_equal_one_big_batch(tmp_path, registry):
    """Batches of 8 with accumulate_steps=4 take batch 32's steps: the same rows per update (the
    same shuffle), the last partial batch (4 rows of 100) as batch 32 takes it, and the step
    counter counts updates. Dropout 0: equal up to float summation order (rel 1e-5)."""
    big = jaxyard.train(config(registry), out_dir=tmp_path / "big")
    small = jaxyard.train(config(registry, "run.accumulate_steps=4", batch_size=8), out_dir=tmp_path / "small")
    for a, b in zip(metrics(big), metrics(small), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert [r["step"] for r in small.history] == [r["step"] for r in big.history] == [4, 8, 12]
    for key, value in big.test.items():
        assert small.test[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_accumulated_final_parameters_equal_one_big_batch(registry):
    """The weights after an epoch of 100 rows (3 whole groups and one of 4 rows): batch 8 x 4 equals batch 32."""
    from flax import nnx

    def trained(*sets, **run):
        built = build(config(registry, *sets, **run))
        make_loop(built).train_epoch(1)
        model, optimizer = merged(built.train_graphdef, built.state)
        return jax.tree.leaves(nnx.state(model, nnx.Param)), int(optimizer.step[...]), built.total_steps

    big, small = trained(), trained("run.accumulate_steps=4", batch_size=8)
    for got, want in zip(small[0], big[0], strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert (big[1:], small[1:]) == ((4, 12), (16, 12))  # micro-batches called the optimizer; the schedule counts updates


def test_weight_average_is_the_debiased_average_step_by_step(registry):
    """One step per epoch (batch = the whole split): after step t the average is optax's debiased
    one, sum_i (1 - d) d**(t - i) p_i / (1 - d**t), computed here by hand from the parameters."""
    from flax import nnx

    from jaxyard.core.train.averaging import EmaParamsState

    decay = 0.7
    built = build(config(registry, f"run.ema_decay={decay}", batch_size=100))
    loop = make_loop(built)

    def params_and_ema():
        model, optimizer = merged(built.train_graphdef, built.state)
        params = [np.asarray(p, np.float64) for p in jax.tree.leaves(nnx.state(model, nnx.Param))]
        ema = [n for n in jax.tree.leaves(optimizer.opt_state, is_leaf=lambda n: isinstance(n, EmaParamsState)) if isinstance(n, EmaParamsState)]
        return params, [np.asarray(e) for e in jax.tree.leaves(ema[0].ema)]

    initial, ema = params_and_ema()
    for got, want in zip(ema, initial, strict=True):  # before any step: the initial weights
        np.testing.assert_array_equal(got, want)
    seen = []
    for t in (1, 2, 3):
        loop.train_epoch(t)
        params, ema = params_and_ema()
        seen.append(params)
        weights = [(1 - decay) * decay ** (t - i) / (1 - decay**t) for i in range(1, t + 1)]  # sum to 1
        for leaf, got in enumerate(ema):
            want = sum(w * p[leaf] for w, p in zip(weights, seen, strict=True))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not all(np.array_equal(p, e) for p, e in zip(params, ema, strict=True))


def test_averaged_weights_are_evaluated_checkpointed_and_evaluable_again(tmp_path, registry, run_cli):
    """decay 0.999 over 12 updates: debiased, the average is about the mean of the 12 steps'
    weights, within 0.1 of their test accuracy (0.86 against 0.90; jaxyard 0.3's average, 99%
    the initial weights, had 0.40)."""
    out = tmp_path / "run"
    result = jaxyard.train(config(registry, "run.ema_decay=0.999", learning_rate=0.01), out_dir=out)
    assert {"val_loss_ema", "val_acc_ema"} <= result.history[-1].keys()
    assert result.history[-1]["val_loss_ema"] != result.history[-1]["val_loss"]
    assert result.test["test_acc_ema"] >= result.test["test_acc"] - 0.1, result.test
    again = jaxyard.evaluate(out, weights="ema", registry=registry)
    assert (again.test_loss, again.test_acc) == (result.test["test_loss_ema"], result.test["test_acc_ema"])
    plain = jaxyard.evaluate(out, registry=registry)
    assert (plain.test_loss, plain.test_acc) == (result.test["test_loss"], result.test["test_acc"])
    cli = run_cli(["eval", out, "--weights", "ema"])
    assert cli.exit_code == 0 and "(averaged weights)" in cli.stdout


def test_eval_weights_ema_without_an_average_is_one_line(tmp_path, registry, run_cli):
    from helpers import assert_one_line_error

    out = tmp_path / "run"
    jaxyard.train(config(registry, epochs=1), out_dir=out)
    assert_one_line_error(run_cli(["eval", out, "--weights", "ema"]), "kept no average of its weights (run.ema_decay = 0)")


def test_profile_writes_a_trace_of_one_epoch(tmp_path, registry, run_cli):
    out = tmp_path / "run"
    args = ["run", "--out", out, "--epochs", "3", "--profile", *as_options(TINY)]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    assert f"Profile of epoch 2 written to {out / 'profile'}" in result.stdout
    traces = list((out / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


def test_epoch_progress_bar_in_a_terminal(tmp_path, registry, monkeypatch):
    """In a terminal (train(progress=...)), in-memory epochs advance one bar; it is gone at the end."""
    import rich.progress

    events = []

    class Spy:
        def __init__(self, *columns, **kwargs):
            events.append(("new", kwargs.get("transient")))
            self.task_ids = [0]

        def add_task(self, name, total, completed):
            events.append(("task", total, completed))

        def start(self):
            events.append("start")

        def advance(self, task):
            events.append("advance")

        def stop(self):
            events.append("stop")

    monkeypatch.setattr(rich.progress, "Progress", Spy)
    jaxyard.train(config(registry), out_dir=tmp_path / "run", progress=lambda **kw: None)
    assert events == [("new", True), ("task", 3, 0), "start", "advance", "advance", "advance", "stop"]
    events.clear()
    jaxyard.train(config(registry), out_dir=tmp_path / "quiet")  # not a terminal: no bar
    assert events == []

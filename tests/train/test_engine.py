"""The training engine through its library call: learning, determinism, dropout, guards."""

import json
import math

import jax
import numpy as np
import pytest

import jaxyard
from jaxyard.core.train.build import build, schedule_points
from jaxyard.core.train.loop import make_loop, means
from jaxyard.core.train.steps import merged  # (model, optimizer) of a built run's state

from helpers import LOCAL, compiled_during, tiny

LOCAL_PLUGIN = str(LOCAL / "shapes.py")


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(plugins=[LOCAL_PLUGIN], strict=True)


def config(registry, *sets, **run):
    """The tiny workload, no checkpoints, batches of 16; a component named in ``run`` drops TINY's
    parameters of its kind (they belong to the default components)."""
    options = {"epochs": 1, "batch_size": 16, **run}
    sets = tiny("run.checkpointer=none", *sets, without=[kind for kind in ("model", "loader", "optimizer", "scheduler") if kind in run])
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options, sets=sets)


# Each optimizer lowering the loss and each schedule staying finite are checked per component
# by the conformance kit (tests/kit/test_conformance.py); here, the engine trains any of them alike.
def test_a_third_party_optimizer_and_schedule_lower_the_loss(registry):
    built = build(config(registry, "model.dropout_rate=0.0", optimizer="signsgd", scheduler="linear", learning_rate=1e-2))
    loop = make_loop(built)
    before = means(jax.device_get(loop.evaluate("train")))[0]
    loop.train_epoch(1)
    assert means(jax.device_get(loop.evaluate("train")))[0] < before


def test_default_run_learns_well_above_chance(tmp_path):
    """The shipped defaults (the seed workload, learnable labels) reach a high validation accuracy."""
    reg = jaxyard.build_registry(strict=True)
    cfg = jaxyard.resolve_config(reg, jaxyard.load_settings(), options={"epochs": 5}, sets=["run.checkpointer=none"])
    result = jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert result.history[-1]["val_acc"] > 0.6  # chance is 0.1
    assert result.test["test_acc"] > 0.6


def test_random_labels_stay_near_chance(tmp_path, registry):
    cfg = config(registry, "loader.random_labels=true", "loader.val_size=400", epochs=3)
    result = jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert result.history[-1]["val_acc"] < 0.4  # 4 classes: chance is 0.25


def test_digits_reaches_high_test_accuracy(tmp_path):
    pytest.importorskip("sklearn")
    reg = jaxyard.build_registry(strict=True)
    cfg = jaxyard.resolve_config(
        reg,
        jaxyard.load_settings(),
        options={"loader": "digits", "epochs": 8, "learning_rate": 3e-3},
        sets=["run.checkpointer=none", "run.warmup_steps=20"],
    )
    result = jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert result.test["test_acc"] > 0.9


def test_run_directory_holds_config_metrics_and_a_real_png(tmp_path, registry):
    import tomllib

    import matplotlib.image

    cfg = config(registry, epochs=3)
    out = tmp_path / "run"
    jaxyard.train(cfg, out_dir=out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    keys = {"epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "train_time", "val_time"}
    for i, line in enumerate(lines, 1):
        record = json.loads(line)
        assert keys <= record.keys() and record["epoch"] == i
        assert all(math.isfinite(record[k]) for k in keys)
    image = matplotlib.image.imread(out / "training_curves.png")
    assert image.shape[:2] == (400, 1500)  # 15 x 4 inches at 100 dpi
    assert image.std() > 0.01  # something was drawn
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["run"]["epochs"] == 3 and saved["model"]["mlp"]["hidden_dims"] == [32]


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, registry):
    runs = [jaxyard.train(config(registry, epochs=2, seed=s), out_dir=tmp_path / f"r{i}") for i, s in enumerate((3, 3, 4))]
    strip = [[{k: v for k, v in r.items() if not k.endswith("time")} for r in run.history] for run in runs]
    assert strip[0] == strip[1]
    assert strip[0] != strip[2]


def test_dropout_is_on_in_training_and_off_in_evaluation(registry):
    """The engine's evaluation equals a dropout-free forward pass; its training graph drops units."""
    import optax

    built = build(config(registry, "model.dropout_rate=0.9"))
    x, y = built.data.val.x, built.data.val.y
    no_dropout = config(registry, "model.dropout_rate=0.0")
    plain, _ = merged(build(no_dropout).train_graphdef, built.state)  # same weights, no dropout layer effect
    expected = float(optax.softmax_cross_entropy_with_integer_labels(plain(x), y).sum())
    loss_sum = float(make_loop(built).evaluate("val")["loss"])
    assert loss_sum == pytest.approx(expected, rel=1e-5)

    model, _ = merged(built.train_graphdef, built.state)
    assert not np.array_equal(model(x), model(x))  # training mode: a new mask each call
    model, _ = merged(built.eval_graphdef, built.state)
    np.testing.assert_array_equal(model(x), model(x))


def test_partial_last_batch_is_padded_and_masked(registry):
    """100 examples in batches of 16: 7 steps, and the epoch's mean covers exactly 100 examples."""
    built = build(config(registry))
    assert built.steps_per_epoch == 7
    sums = jax.device_get(make_loop(built).train_epoch(1))
    assert sums["count"] == 100


def test_drop_last_drops_the_partial_batch(registry):
    built = build(config(registry, "run.drop_last=true"))
    assert built.steps_per_epoch == 6
    assert jax.device_get(make_loop(built).train_epoch(1))["count"] == 96


def test_streaming_loader_trains_with_one_compiled_step(tmp_path, registry):
    cfg = config(registry, epochs=3, loader="stream", learning_rate=1e-2)
    built = build(cfg)
    loop = make_loop(built)
    losses, compiled = compiled_during(lambda: [means(jax.device_get(loop.train_epoch(e)))[0] for e in (1, 2, 3)])
    assert losses[-1] < losses[0]
    assert compiled and len(compiled) == len(set(compiled)), compiled  # the short last batch did not trigger a recompile
    result = jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert len(result.history) == 3


def test_model_loader_mismatch_is_refused_before_training(tmp_path, registry):
    cfg = config(registry, model="fixed")  # fixed takes 10 features; the loader gives 16
    with pytest.raises(jaxyard.UsageError, match=r"model 'fixed' does not accept inputs of shape \(16,\)"):
        jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_diverging_run_stops_with_a_clear_message(tmp_path, registry):
    cfg = config(registry, "model.dropout_rate=0.0", epochs=3, optimizer="sgd", learning_rate=1e30)
    with pytest.raises(jaxyard.JaxyardError, match="training diverged at epoch 1"):
        jaxyard.train(cfg, out_dir=tmp_path / "run")


def test_early_stopping_stops_and_saves(tmp_path, registry):
    cfg = config(registry, "run.patience=1", "run.min_delta=1000.0", "run.checkpointer=orbax", epochs=6)
    result = jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert result.stopped_early and len(result.history) == 2
    assert (tmp_path / "run" / "checkpoints" / str(result.history[-1]["step"])).is_dir()


def test_an_existing_run_is_never_overwritten(tmp_path, registry):
    out = tmp_path / "run"
    jaxyard.train(config(registry), out_dir=out)
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(jaxyard.UsageError, match="is not empty"):
        jaxyard.train(config(registry), out_dir=out)
    assert (out / "metrics.jsonl").read_bytes() == before


def test_streaming_epochs_report_progress_per_step(registry):
    """The per-epoch progress bar (click.progressbar in a terminal) advances once per batch."""
    updates = []

    class Bar:
        def __init__(self, length, label):
            updates.append((label, length))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)

    built = build(config(registry, loader="stream"))
    make_loop(built).train_epoch(1, progress=Bar)
    assert updates == [("Epoch 1", 7), *[1] * 7]


def test_clip_norm_bounds_each_update(registry):
    """With run.clip_norm, SGD at lr 1 moves the parameters by at most the clip norm per step."""
    from flax import nnx

    cfg = config(registry, "model.dropout_rate=0.0", "run.clip_norm=0.001", "run.warmup_steps=0",
                 optimizer="sgd", scheduler="constant", learning_rate=1.0, batch_size=100)
    built = build(cfg)
    before = [np.array(a) for a in jax.tree.leaves(nnx.state(merged(built.train_graphdef, built.state)[0], nnx.Param))]
    make_loop(built).train_epoch(1)  # one step: 100 examples, batch 100
    after = jax.tree.leaves(nnx.state(merged(built.train_graphdef, built.state)[0], nnx.Param))
    moved = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(after, before, strict=True)))
    assert 0 < moved <= 0.001 + 1e-7


def test_schedule_spans_the_run_and_warmup_composes(registry):
    cfg = config(registry, "run.warmup_steps=7", epochs=3)  # 7 steps per epoch: 21 in all
    info = schedule_points(cfg, points=4)
    assert info["total_steps"] == 21 and info["warmup_steps"] == 7
    rates = info["every_step"]
    assert rates[0] == 0 and rates[7] == pytest.approx(1e-3) and rates[21] == pytest.approx(0, abs=1e-9)
    assert all(a <= b for a, b in zip(rates[:7], rates[1:8], strict=True))  # warmup rises, then cosine falls
    assert all(a >= b for a, b in zip(rates[7:-1], rates[8:], strict=True))


def test_schedule_command_prints_a_table_and_a_png(run_cli, tmp_path):
    import matplotlib.image

    result = run_cli(["schedule", "--scheduler", "exponential", "--set", "scheduler.decay_rate=0.5", "--png", tmp_path / "lr.png"])
    assert result.exit_code == 0, result.stderr
    assert "exponential: peak 0.001, warmup 100 steps, 320 steps (10 epochs of 32)" in result.stdout
    assert matplotlib.image.imread(tmp_path / "lr.png").shape[:2] == (400, 800)

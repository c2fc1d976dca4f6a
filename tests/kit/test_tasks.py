"""The kit and tasks: the task checks catch what they are meant to catch, models and loaders are
checked against a task, and the plugin guide's own task (docs/tasks.md) passes the kit and trains."""

from __future__ import annotations

import re

import pytest

import jaxyard
import jaxyard.testing as kit
from jaxyard.core.kit.examples import KINDS_OF_DATA, model_keywords
from jaxyard.testing import check_component, checks_for

from helpers import REPO

TASKS_PLUGIN = '''
"""Tasks (and a model and loaders) that each keep or break one contract (the kit's own test)."""
import attrs

import jaxyard
from jaxyard.core.task import features, masked_mean, targets

CALLS = [0]


class Base(jaxyard.Task):
    """Regression on float targets: the kit's "values" example."""

    metrics = {"loss": "min"}

    def __init__(self, p=None):
        self.p = p

    def context(self, data, example):
        return {"num_outputs": targets(example).shape[1]}

    def check(self, batch, where, context):
        if targets(batch).dtype.kind != "f":
            raise jaxyard.UsageError(f"{where}: float targets only")

    def per_row(self, model, batch):
        import jax.numpy as jnp

        return jnp.square(model(features(batch)) - targets(batch)).mean(axis=1)

    def loss(self, model, batch, mask):
        loss, total, count = masked_mean(self.per_row(model, batch), mask)
        return loss, {"loss": total, "count": count}


class NoLossMetric(Base):
    metrics = {"mse": "min"}


class IgnoresMask(Base):
    def loss(self, model, batch, mask):
        import jax.numpy as jnp

        per_row = self.per_row(model, batch)
        return per_row.mean(), {"loss": jnp.sum(per_row), "count": jnp.sum(mask)}


class Means(Base):
    def loss(self, model, batch, mask):
        loss, total, count = masked_mean(self.per_row(model, batch), mask)
        return loss, {"loss": loss, "count": count}


class HostCounter(Base):
    def loss(self, model, batch, mask):
        CALLS[0] += 1
        loss, total, count = masked_mean(self.per_row(model, batch), mask)
        return loss + CALLS[0], {"loss": total + CALLS[0], "count": count}


@attrs.frozen
class WeightParams:
    weight: float = jaxyard.param(1.0, "scales the loss", traced=True)


class Branches(Base):
    def loss(self, model, batch, mask):
        loss, total, count = masked_mean(self.per_row(model, batch), mask)
        if self.p.weight > 0:  # a traced parameter: a sweep cannot branch on it
            loss = loss * self.p.weight
        return loss, {"loss": total, "count": count}


class NanAtInit(Base):
    def per_row(self, model, batch):
        import jax.numpy as jnp

        return jnp.log(jnp.zeros(targets(batch).shape[0]))


class NanOnZeroRows(Base):
    def per_row(self, model, batch):
        import jax.numpy as jnp

        x = features(batch)
        return super().per_row(model, batch) / jnp.sum(jnp.abs(x), axis=1)


class AcceptsNothing(Base):
    def check(self, batch, where, context):
        raise jaxyard.UsageError(f"{where}: nothing suits me")


class OwnExample(Base):
    """An autoencoder on {"x": ...} batches: none of the kit's data, so it gives its own."""

    def context(self, data, example):
        return {"num_outputs": 6}

    def check(self, batch, where, context):
        if set(batch) != {"x"}:
            raise jaxyard.UsageError(f"{where}: needs {{'x': ...}} batches")

    def per_row(self, model, batch):
        import jax.numpy as jnp

        return jnp.square(model(batch["x"]) - batch["x"]).mean(axis=1)

    def kit_example(self, rows):
        import numpy as np
        from flax import nnx

        x = np.random.default_rng(0).normal(size=(rows, 6)).astype(np.float32)
        return {"x": x}, lambda rngs: nnx.Linear(6, 6, rngs=rngs)


def seq_model(p, *, input_shape, num_outputs, rngs, vocab_size, seq_len):
    """Embeds each token and predicts the next one from it."""
    from flax import nnx

    class Seq(nnx.Module):
        def __init__(self):
            assert input_shape == (seq_len,), (input_shape, seq_len)
            self.embed = nnx.Embed(vocab_size, 16, rngs=rngs)
            self.out = nnx.Linear(16, num_outputs, rngs=rngs)

        def __call__(self, tokens):
            return self.out(self.embed(tokens))

    return Seq()


def _split(x, y):
    return jaxyard.Split(x.astype("float32"), y)


def float_targets(p, *, seed):
    """Float targets (n, 2), no num_classes."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(20, 3))
    return jaxyard.Dataset(_split(x, x[:, :2].astype("float32")), _split(x, x[:, :2].astype("float32")), _split(x, x[:, :2].astype("float32")))


def int_matrix(p, *, seed):
    """Integer targets (n, 2) in 0..5: labels of no task."""
    import numpy as np

    x, y = np.ones((8, 2)), (np.arange(16) % 6).reshape(8, 2).astype("int32")
    return jaxyard.Dataset(_split(x, y), _split(x, y), _split(x, y))


@jaxyard.hookimpl
def jaxyard_register_tasks(register):
    register("kit-base", Base, description="regression on float targets")
    register("kit-no-loss-metric", NoLossMetric, description="reports no loss")
    register("kit-ignores-mask", IgnoresMask, description="sums every row, padding too")
    register("kit-means", Means, description="returns means as sums")
    register("kit-host-counter", HostCounter, description="adds a Python counter")
    register("kit-branches", Branches, params=WeightParams, description="branches on a traced parameter")
    register("kit-nan-at-init", NanAtInit, description="log(0)")
    register("kit-nan-on-zero-rows", NanOnZeroRows, description="divides by each row's norm")
    register("kit-accepts-nothing", AcceptsNothing, description="refuses every batch")
    register("kit-own-example", OwnExample, description="an autoencoder with its own example")


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("kit-seq", seq_model)


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register("kit-float-targets", float_targets)
    register("kit-int-matrix", int_matrix)
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit_tasks")
    (folder / "jaxyard_kit_tasks.py").write_text(TASKS_PLUGIN)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        yield jaxyard.build_registry(plugins=["jaxyard_kit_tasks"], strict=True)


TASK_CHECKS = ["returns_task", "loss_finite", "jit_equals_eager", "padding_ignored", "sums_additive", "vmaps_over_trials"]


def test_task_checks_and_tiers():
    api = [c.name for c in checks_for("task:classification", "api")]
    full = [c.name for c in checks_for("task:classification", "full")]
    assert api == ["entry_point", "description", "params_documented", "params_roundtrip", "light_import", "returns_task"]
    assert full == api + TASK_CHECKS[1:]


@pytest.mark.parametrize("name", ["kit-base", "kit-own-example"])
def test_good_tasks_pass(registry, name, tmp_path):
    results = check_component(f"task:{name}", registry=registry, tmp_path=tmp_path, skip={"light_import": "tested elsewhere"})
    assert all(results[c].startswith("passed") for c in TASK_CHECKS), results
    example = "kit_example" if name == "kit-own-example" else "values"
    assert results["returns_task"].endswith(f"checked on the kit's {example} example"), results


CAUGHT = [
    ("kit-no-loss-metric", "returns_task", "task 'kit-no-loss-metric' reports mse; every task reports 'loss'"),
    ("kit-accepts-nothing", "returns_task",
     "it accepts none of the kit's example data (classes: IndexError: tuple index out of range; values: the kit's values example (train): nothing"),
    ("kit-nan-at-init", "loss_finite", "the loss, sum 'loss' not finite on a freshly initialised model"),
    ("kit-host-counter", "jit_equals_eager", "eager and jitted differ: the loss is"),
    ("kit-ignores-mask", "padding_ignored", "with 3 other rows appended (mask 0), the loss is"),
    ("kit-nan-on-zero-rows", "padding_ignored", "with 3 rows of zeros in front (mask 0), the loss is"),
    ("kit-means", "sums_additive", "sum 'loss' of the whole batch is"),
    ("kit-branches", "vmaps_over_trials", "vmapped over 2 trials it raises TracerBoolConversionError"),
]


@pytest.mark.parametrize("name, check_name, fragment", CAUGHT, ids=[f"{c[0]}-{c[1]}" for c in CAUGHT])
def test_the_task_checks_catch(registry, name, check_name, fragment, tmp_path):
    entry = kit.resolve_entry(f"task:{name}", registry)
    check = next(c for c in checks_for(entry) if c.name == check_name).bind(kit.Options(registry=registry))
    with pytest.raises(AssertionError) as info:
        kit.run_check(entry, check, tmp_path=tmp_path)
    message = str(info.value)
    assert message.startswith(f"task {name!r} (plugin ") and f"fails jaxyard check {check_name!r}" in message
    assert fragment in message, message
    assert "Fix: " in message and "\n" not in message


def test_the_kit_knows_its_example_data():
    assert list(KINDS_OF_DATA) == ["classes", "values", "tags", "tokens"]


# --- models and loaders, checked against a task -----------------------------------------------------


def test_a_model_is_checked_for_the_task_it_names(registry, tmp_path):
    results = check_component("model:kit-seq", registry=registry, task="next_token", tmp_path=tmp_path, skip={"light_import": "tested elsewhere"})
    assert all(r.startswith("passed") for k, r in results.items() if k != "light_import"), results
    assert results["returns_module"] == "passed: task next_token on the kit's tokens example: input_shape (8,), output (2, 8, 11)"
    with pytest.raises(AssertionError) as info:  # checked for classification, the default, it fails and says what to do
        check_component("model:kit-seq", registry=registry, tier="api", skip={"light_import": "tested elsewhere"})
    assert "for task 'classification' it maps none of the example shapes" in str(info.value)
    assert "task={'model:NAME': 'TASK'}" in str(info.value)


@pytest.mark.parametrize("task, output", [("regression", "(2, 3)"), ("multilabel", "(2, 3)"), ("classification", "(2, 5)")])
def test_the_mlp_is_checked_for_other_tasks(task, output):
    results = check_component("model:mlp", task=task, tier="api")
    assert results["returns_module"] == f"passed: task {task} on the kit's {dict(regression='values', multilabel='tags').get(task, 'classes')} " \
                                        f"example: input_shape (12,), output {output}"


def test_model_keywords():
    def new(p, *, input_shape, num_outputs, rngs):
        pass

    def legacy(p, *, input_shape, num_classes, rngs):
        pass

    def names_more(p, *, input_shape, num_outputs, rngs, vocab_size, seq_len=4):
        pass

    def takes_all(p, **context):
        pass

    context = {"num_outputs": 11, "vocab_size": 11, "seq_len": 8, "input_shape": (8,)}
    assert model_keywords(new, (8,), context, "R") == {"input_shape": (8,), "rngs": "R", "num_outputs": 11}
    assert model_keywords(legacy, (8,), {"num_outputs": 3}, "R") == {"input_shape": (8,), "rngs": "R", "num_classes": 3}
    assert model_keywords(legacy, (8,), {"num_outputs": 5, "num_classes": 5}, "R") == {"input_shape": (8,), "rngs": "R", "num_classes": 5}
    assert model_keywords(names_more, (8,), context, "R") == {"input_shape": (8,), "rngs": "R", "num_outputs": 11, "vocab_size": 11, "seq_len": 8}
    assert model_keywords(takes_all, (8,), context, "R") == {"input_shape": (8,), "rngs": "R", "num_outputs": 11, "vocab_size": 11, "seq_len": 8}


def test_loaders_fit_the_task_their_data_suits(registry, tmp_path):
    results = check_component("loader:kit-float-targets", registry=registry, tier="api", tmp_path=tmp_path, skip={"light_import": "tested elsewhere"})
    assert results["returns_dataset"].endswith("num_classes None") and results["fits_a_task"].startswith("passed: task kit-base: "), results
    with pytest.raises(AssertionError) as info:
        check_component("loader:kit-int-matrix", registry=registry, tier="api", skip={"light_import": "tested elsewhere"})
    text = str(info.value)
    assert text.startswith("1 of 12 checks failed:") and "check 'fits_a_task'" in text, text
    assert "no task accepts its data (task 'classification': " in text, text  # each task's own refusal, in its words
    assert all(f"; task {name!r}: the train split gives " in text for name in ("multilabel", "next_token", "regression")), text
    # the task named for it, only
    with pytest.raises(AssertionError) as info:
        check_component("loader:regression", task="classification", tier="api")
    assert "no task accepts its data (task 'classification': " in str(info.value) and "task 'regression'" not in str(info.value)
    results = check_component("loader:regression", task={"loader:*": "regression"}, tier="api")
    assert results["fits_a_task"] == "passed: task regression: {'num_outputs': 1}"


def test_task_option_is_a_name():
    with pytest.raises(jaxyard.UsageError, match=r"task for model:mlp must be a task's name \(e.g. 'regression'\), got 3"):
        check_component("model:mlp", task=3, tier="api")


# --- the plugin guide's task ----------------------------------------------------------------------------

GUIDE = REPO / "docs" / "tasks.md"


def guide_code() -> str:
    """The first python block after the guide's heading "A task of your own"."""
    text = GUIDE.read_text()
    section = text[text.index("## A task of your own"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def guide_plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("guide") / "quantile.py"
    path.write_text(guide_code())
    return path


def test_the_guides_task_is_short_and_passes_the_kit(guide_plugin, tmp_path):
    lines = guide_code().splitlines()
    assert len(lines) < 40, len(lines)
    registry = jaxyard.build_registry(plugins=[str(guide_plugin)], strict=True)
    results = check_component("task:quantile", registry=registry, tmp_path=tmp_path)
    assert results.pop("light_import").startswith("skipped: plugin"), results  # a .py file
    assert all(r.startswith("passed") for r in results.values()), results
    assert results["vmaps_over_trials"] == "passed: traced: q 0.9/0.909"


def test_the_guides_task_trains_from_the_cli(guide_plugin, run_cli, tmp_path):
    sizes = ["--set", "loader.train_size=64", "--set", "loader.val_size=32", "--set", "loader.test_size=32", "--set", "model.hidden_dims=16"]
    result = run_cli(["--plugin", guide_plugin, "run", "--task", "quantile", "--loader", "regression", "--epochs", "2",
                      "--out", tmp_path / "run", *sizes])
    assert result.exit_code == 0, (result.stdout[-2000:], result.stderr, result.exception)
    assert "Test MAE: " in result.stdout and "Val   - Loss: " in result.stdout, result.stdout
    refused = run_cli(["--plugin", guide_plugin, "run", "--task", "quantile", "--epochs", "1", "--out", tmp_path / "refused"])
    assert refused.exit_code != 0 and refused.stderr.strip() == (
        "Error: loader 'synthetic': the train split gives int32 targets; task 'quantile' needs float ones"
    ), (refused.stdout, refused.stderr)

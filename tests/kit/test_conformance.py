"""The conformance kit (jaxyard.testing, which is jaxyard.core.kit): the built-ins pass it, it catches
broken components, and a plugin package's own tests use it in a real pytest session (the pytest11
entry point)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import jaxyard
import jaxyard.testing as kit
from jaxyard.testing import check_component, checks_for, components, parametrize_with_checks

from helpers import EXAMPLE, REPO, clean_environ

# --- the built-ins pass their own kit --------------------------------------------------------------

NOTHING_SAVED = "the 'none' checkpointer saves nothing by design (no resume, no eval --checkpoint): there is nothing to read back"
SKIP = {
    "checkpointer:none": {
        check: NOTHING_SAVED
        for check in ("roundtrip", "roundtrip_bfloat16", "steps_and_delete", "save_existing_raises", "retention", "damaged_latest_skipped")
    },
}
if importlib.util.find_spec("sklearn") is None:
    SKIP["loader:digits"] = {"*": "needs scikit-learn: pip install 'jaxyard[digits]'"}


def npz_file(tmp_path: Path) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(40, 3)), y=np.arange(40) % 4)
    return {"path": str(tmp_path / "data.npz")}


def csv_file(tmp_path: Path) -> dict:
    rows = "\n".join(f"{i * 0.5},{-i},{i % 3}" for i in range(30))
    (tmp_path / "data.csv").write_text("a,b,label\n" + rows + "\n")
    return {"path": str(tmp_path / "data.csv")}


#: the larger built-ins checked at small sizes: the checks are about contracts, not capacity
SMALL = {"model:transformer": {"dim": 32, "layers": 1, "heads": 2}, "model:cnn": {"channels": [8, 16]}, "model:rnn": {"hidden": 16},
         "loader:text": {"max_chars": 20000, "seq_len": 16}}


#: the loaders that read a file, each given one
FILES = {"loader:npz": npz_file, "loader:grain": npz_file, "loader:csv": csv_file, "loader:datasets": csv_file}


@parametrize_with_checks(distribution="jaxyard", tier="full", skip=SKIP, params={**FILES, **SMALL})
def test_builtin_conformance(entry, check, tmp_path):
    check(entry, tmp_path)


# --- the kit's own behaviour -------------------------------------------------------------------------


def test_components_of_a_distribution_are_found_through_the_registry():
    found = {f"{e.kind}:{e.name}" for e in components(distribution="jaxyard-example-plugin")}
    assert found == {"optimizer:signsgd", "scheduler:linear", "model:logreg"}
    builtin = {f"{e.kind}:{e.name}" for e in components(distribution="jaxyard")}
    assert {"optimizer:adam", "checkpointer:orbax", "logger:jsonl"} <= builtin and not builtin & found
    assert [e.name for e in components(plugin="example", kinds=["models"])] == ["logreg"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"distribution": "jaxyard-not-installed"}, "no loaded plugin comes from distribution 'jaxyard-not-installed' (is it installed?"),
        ({"plugin": "example", "kinds": ["checkpointer"]}, "plugin 'example' registers no components of kinds checkpointer"),
    ],
)
def test_components_refuses_to_test_nothing(kwargs, fragment):
    with pytest.raises(jaxyard.UsageError) as info:
        components(**kwargs)
    assert fragment in str(info.value)


def test_tiers_and_ids():
    api = {c.name for c in checks_for("optimizer:adam", "api")}
    full = {c.name for c in checks_for("optimizer:adam", "full")}
    assert {"entry_point", "params_roundtrip", "returns_transformation"} <= api
    assert {"jit_equals_eager", "loss_decreases", "no_nan", "state_structure_stable"} <= full - api
    assert all(c.tier in kit.TIERS and c.doc for c in kit.CHECKS)
    mark = parametrize_with_checks(distribution="jaxyard-example-plugin", tier="api", skip={"model:logreg": {"returns_module": "a reason"}})
    assert mark.args[0] == "entry, check"
    ids = [p.id for p in mark.args[1]]
    assert "optimizer:signsgd-follows_learning_rate" in ids and "model:logreg-returns_module" in ids
    assert not any(i.endswith("-loss_decreases") for i in ids)  # a full-tier check
    skipped = [p for p in mark.args[1] if p.marks]
    assert [p.id for p in skipped] == ["model:logreg-returns_module"] and skipped[0].marks[0].kwargs["reason"] == "a reason"


@pytest.mark.parametrize(
    "skip, fragment",
    [
        ({"optimizer:adamx": {"no_nan": "r"}}, "skip key 'optimizer:adamx' matches no component"),
        ({"optimizer:signsgd": {"no_nam": "r"}}, "no check 'no_nam' applies to it"),
        ({"optimizer:signsgd": {"no_nan": ""}}, "give the reason"),
        ({"signsgd": {"no_nan": "r"}}, "name a component as KIND:NAME"),
    ],
)
def test_opt_outs_are_checked(skip, fragment):
    with pytest.raises(jaxyard.UsageError, match=fragment.replace("(", r"\(")):
        parametrize_with_checks(distribution="jaxyard-example-plugin", skip=skip)


def test_check_component_reports_each_check():
    results = check_component("scheduler:linear", tier="api", skip={"light_import": "tested elsewhere"})
    assert results["light_import"] == "skipped: tested elsewhere"
    assert results["returns_schedule"].startswith("passed: rate at step 0: 0.1")
    assert set(results) == {c.name for c in checks_for("scheduler:linear", "api")}


PROBE = """
import json, sys, warnings
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy")
import jaxyard.core.kit.pytest_plugin
plugin = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m.startswith("jaxyard.core.kit.") and not m.endswith(".pytest_plugin"))
import jaxyard.core.kit, jaxyard.testing
from jaxyard.testing import CHECKS
kit = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import jaxyard.core.testing
print(json.dumps({"plugin": plugin, "kit": kit, "alias": jaxyard.testing is jaxyard.core.kit, "checks": len(CHECKS),
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def test_what_importing_the_kit_and_its_pytest_plugin_costs():
    """pytest imports the plugin in every session: it loads nothing of the kit and no jax. The kit,
    checks included, loads no jax either; jaxyard.testing is it, jaxyard.core.testing warns."""
    proc = subprocess.run([sys.executable, "-c", PROBE], check=False, capture_output=True, text=True, timeout=60, env=clean_environ())
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["plugin"] == [] and found["kit"] == [] and found["alias"] and found["checks"] == len(kit.CHECKS), found
    assert [w.split(" in jaxyard")[0] for w in found["warnings"]] == ["DeprecationWarning: jaxyard.core.testing moved to jaxyard.core.kit"]


def test_pytest_plugin_is_registered(jaxyard_registry):
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="pytest11") if ep.dist and ep.dist.name == "jaxyard"}
    assert eps == {"jaxyard": "jaxyard.core.kit.pytest_plugin"}, "reinstall jaxyard (pip install -e .) to register the pytest11 entry point"
    assert jaxyard_registry.get("optimizer", "adam").plugin == "jaxyard.plugins.optimizers"


@pytest.mark.slow
def test_example_package_runs_the_kit_in_its_own_pytest_session():
    """The example package's tests, as its author runs them: pytest from its directory, the kit's
    pytest plugin loaded through the entry point (its fixture is used there)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        check=False, cwd=EXAMPLE, capture_output=True, text=True, timeout=300, env=clean_environ(),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary and "error" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 30, summary  # one test per component and check


def test_example_tests_are_not_collected_by_the_repository_run(request):
    """The example package's tests run in their own session (above), never in this one: this
    session's collected items (each xdist worker collects them all) hold none of them."""
    assert (EXAMPLE / "tests" / "test_conformance.py").is_file()
    items = request.session.items
    assert any(item.path == Path(__file__) for item in items)  # this session's items are what was collected
    assert not [item.nodeid for item in items if EXAMPLE in item.path.parents]


# --- the kit catches what it is meant to catch ------------------------------------------------------

BAD_PLUGIN = '''
"""Components that each break one contract (the kit's own test)."""
import math
from pathlib import Path

import attrs

import jaxyard

CALLS = [0]


def _sgd(learning_rate):
    import optax

    return optax.sgd(learning_rate)


def ignores_lr(p, *, learning_rate):
    """Ignores the schedule it is given."""
    return _sgd(0.01)


def ascends(p, *, learning_rate):
    """Steps up the gradient."""
    import optax

    return optax.scale_by_learning_rate(learning_rate, flip_sign=False)


def host_state(p, *, learning_rate):
    """Scales each update by a Python counter."""
    import jax
    import optax

    base = _sgd(learning_rate)

    def update(g, s, params=None):
        CALLS[0] += 1
        u, s = base.update(g, s, params)
        return jax.tree.map(lambda x: x * CALLS[0], u), s

    return optax.GradientTransformation(base.init, update)


def nan_on_zero(p, *, learning_rate):
    """Normalises each gradient entry by its magnitude."""
    import jax
    import jax.numpy as jnp
    import optax

    def update(g, s, params=None):
        return jax.tree.map(lambda x: x / jnp.abs(x), g), s

    return optax.chain(optax.GradientTransformation(lambda p: optax.EmptyState(), update), optax.scale_by_learning_rate(learning_rate))


def drifting_state(p, *, learning_rate):
    """Its state turns from int32 to float32."""
    import jax
    import jax.numpy as jnp
    import optax

    def update(g, s, params=None):
        return jax.tree.map(lambda x: -0.01 * x, g), s + 0.5

    return optax.GradientTransformation(lambda p: jnp.zeros([], jnp.int32), update)


def overshoots(p, *, learning_rate, decay_steps):
    """Decays linearly to minus the peak."""
    import optax

    return optax.linear_schedule(learning_rate, -learning_rate, decay_steps)


def _linear_model(input_shape, classes, rngs, call):
    from flax import nnx

    class M(nnx.Module):
        def __init__(self):
            self.l = nnx.Linear(math.prod(input_shape), classes, rngs=rngs)
            self.rngs = rngs

        def __call__(self, x):
            return call(self, self.l(x.reshape(x.shape[0], -1)))

    return M()


def ten_classes(p, *, input_shape, num_outputs, rngs):
    """Always 10 logits."""
    return _linear_model(input_shape, 10, rngs, lambda m, y: y)


def mixes_batch(p, *, input_shape, num_outputs, rngs):
    """Subtracts the batch mean."""
    return _linear_model(input_shape, num_outputs, rngs, lambda m, y: y - y.mean(axis=0))


def fixed_seed(p, *, input_shape, num_outputs, rngs):
    """Initialised from nnx.Rngs(0) whatever it is given."""
    from flax import nnx

    return _linear_model(input_shape, num_outputs, nnx.Rngs(0), lambda m, y: y)


def noisy_eval(p, *, input_shape, num_outputs, rngs):
    """Adds noise in eval mode too."""
    import jax

    return _linear_model(input_shape, num_outputs, rngs, lambda m, y: y + jax.random.normal(m.rngs.dropout(), y.shape))


def _split(x, y):
    return jaxyard.Split(x.astype("float32"), y.astype("int32"))


def label_overflow(p, *, seed):
    """Labels 0..3 for 3 classes."""
    import numpy as np

    x, y = np.ones((8, 2)), np.arange(8) % 4
    return jaxyard.Dataset(_split(x, y), _split(x, y), _split(x, y), 3)


def global_rng(p, *, seed):
    """Draws from numpy's global random state."""
    import numpy as np

    x, y = np.random.normal(size=(8, 2)), np.arange(8) % 2
    return jaxyard.Dataset(_split(x, y), _split(x, y), _split(x, y), 2)


def run_seeded(p, *, seed):
    """Draws its data from the run's seed."""
    import numpy as np

    x, y = np.random.default_rng(seed).normal(size=(8, 2)), np.arange(8) % 2
    return jaxyard.Dataset(_split(x, y), _split(x, y), _split(x, y), 2)


class CwdLogger:
    def start(self, run):
        Path("stray.txt").write_text("written in the working directory")

    def log_epoch(self, record):
        pass

    def finish(self, run, status, result=None):
        pass


class NoFinish:
    def start(self, run):
        pass

    def log_epoch(self, record):
        pass


@attrs.frozen
class BadDefault:
    rate: float = jaxyard.param(-1.0, "a rate", validator=attrs.validators.ge(0.0))


@attrs.frozen
class PathParams:
    where: Path = jaxyard.param(Path("data"), "a folder")


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("kit-ignores-lr", ignores_lr)
    register("kit-ascends", ascends)
    register("kit-host-state", host_state)
    register("kit-nan-on-zero", nan_on_zero)
    register("kit-drifting-state", drifting_state)
    register("kit-bad-default", ignores_lr, params=BadDefault)
    register("kit-path-param", ignores_lr, params=PathParams)


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    register("kit-overshoots", overshoots)


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("kit-ten-classes", ten_classes)
    register("kit-mixes-batch", mixes_batch)
    register("kit-fixed-seed", fixed_seed)
    register("kit-noisy-eval", noisy_eval)


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register("kit-label-overflow", label_overflow)
    register("kit-global-rng", global_rng)
    register("kit-run-seeded", run_seeded)


@jaxyard.hookimpl
def jaxyard_register_loggers(register):
    register("kit-cwd", lambda p, *, directory: CwdLogger(), description="writes in the working directory")
    register("kit-no-finish", lambda p, *, directory: NoFinish(), description="lacks finish")
'''

HEAVY_PLUGIN = '''
"""Imports optax at the top: listing pays for it."""
import optax

import jaxyard


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("kit-heavy", lambda p, *, learning_rate: optax.sgd(learning_rate), description="imports optax at the top")
'''

NPZ_CHECKPOINTER = REPO / "tests" / "plugins_local" / "npz_checkpointer.py"


@pytest.fixture(scope="module")
def bad_registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit_plugins")
    (folder / "jaxyard_kit_bad.py").write_text(BAD_PLUGIN)
    (folder / "jaxyard_kit_heavy.py").write_text(HEAVY_PLUGIN)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        registry = jaxyard.build_registry(plugins=["jaxyard_kit_bad", "jaxyard_kit_heavy", str(NPZ_CHECKPOINTER)], strict=True)
        yield registry


CAUGHT = [
    ("optimizer:kit-ignores-lr", "follows_learning_rate", "with a learning rate of 0 the first update still moves"),
    ("optimizer:kit-ascends", "loss_decreases", "the loss does not fall by 20%"),
    ("optimizer:kit-host-state", "jit_equals_eager", "the jitted updates differ from the eager ones"),
    ("optimizer:kit-nan-on-zero", "no_nan", "is not finite"),
    ("optimizer:kit-drifting-state", "state_structure_stable", "shapes or dtypes change"),
    ("optimizer:kit-bad-default", "params_documented", "BadDefault() with its defaults raises ValueError"),
    ("optimizer:kit-path-param", "params_roundtrip", "gives 'data', not its default PosixPath('data')"),
    ("optimizer:kit-heavy", "light_import", "`import jaxyard_kit_heavy` imports jax, jaxlib, optax"),
    ("scheduler:kit-overshoots", "finite_nonnegative", "with decay_steps=1 the rate at step 1 is -0.1"),
    ("model:kit-ten-classes", "returns_module", "it maps none of the example shapes"),
    ("model:kit-mixes-batch", "batch_independent", "the output for a batch of 8 differs"),
    ("model:kit-fixed-seed", "uses_rngs", "identical parameters"),
    ("model:kit-noisy-eval", "train_eval_modes", "two calls in eval mode give different outputs"),
    ("loader:kit-label-overflow", "fits_a_task", "task 'classification': the train split has labels 0..3, outside 0..2 (num_classes)"),
    ("loader:kit-global-rng", "same_seed_same_data", "two loads with seed 0 give different train x"),
    ("loader:kit-run-seeded", "same_data_for_any_run_seed", "the train split differs between run seeds 0 and 1"),
    ("logger:kit-cwd", "logger_lifecycle", "it wrote stray.txt in the working directory"),
    ("logger:kit-no-finish", "logger_protocol", "lacks finish"),
]


@pytest.mark.parametrize("label, check_name, fragment", CAUGHT, ids=[f"{c[0]}-{c[1]}" for c in CAUGHT])
def test_the_kit_catches(bad_registry, label, check_name, fragment, tmp_path):
    entry = kit.resolve_entry(label, bad_registry)
    check = next(c for c in checks_for(entry) if c.name == check_name).bind(kit.Options(registry=bad_registry))
    with pytest.raises(AssertionError) as info:
        kit.run_check(entry, check, tmp_path=tmp_path)
    message = str(info.value)
    kind, name = label.split(":")
    assert message.startswith(f"{kind} {name!r} (plugin ") and f"fails jaxyard check {check_name!r}" in message
    assert fragment in message, message
    assert "Fix: " in message and f"skip={{{label!r}: {{{check_name!r}: " in message and "\n" not in message


def test_the_npz_checkpointer_passes_the_storage_checks(bad_registry, tmp_path):
    """tests/plugins_local/npz_checkpointer.py, the README's 40-line storage-only checkpointer."""
    results = check_component("checkpointer:npz", registry=bad_registry, tmp_path=tmp_path)
    assert {k: v.split(":")[0] for k, v in results.items()} == {
        "entry_point": "passed", "description": "passed", "params_documented": "passed", "params_roundtrip": "passed",
        "light_import": "skipped", "implements_protocol": "passed", "roundtrip": "passed", "roundtrip_bfloat16": "passed",
        "steps_and_delete": "passed", "save_existing_raises": "passed", "damaged_latest_skipped": "passed", "retention": "passed",
    }


def test_check_component_names_every_failure(bad_registry):
    with pytest.raises(AssertionError) as info:
        check_component("loader:kit-label-overflow", registry=bad_registry, tier="api", skip={"light_import": "not the point here"})
    text = str(info.value)
    assert text.startswith(
        "1 of 12 checks failed:\n- loader 'kit-label-overflow' (plugin jaxyard_kit_bad) fails jaxyard check 'fits_a_task'"
    ), text


def test_a_missing_extra_skips_with_its_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` now fails
    results = check_component("logger:tensorboard", tier="api")
    assert results["logger_protocol"] == (
        "skipped: the tensorboard logger needs tensorboardX, which is not installed: pip install 'jaxyard[tensorboard]'"
    )


def test_source_of_the_example_is_what_the_kit_checks():
    """The entry-point check reads the installed distribution's metadata."""
    note = check_component("optimizer:signsgd", tier="api", distribution="jaxyard-example-plugin")["entry_point"]
    assert note == f"passed: entry point example = jaxyard_example_plugin of jaxyard-example-plugin {metadata.version('jaxyard-example-plugin')}"


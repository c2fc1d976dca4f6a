"""Paths and assertions shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import types
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "jaxyard-example-plugin"
EXAMPLE_DIST = "jaxyard-example-plugin"
BROKEN = Path(__file__).resolve().parent / "broken_plugins"
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy", "matplotlib")

# (file in tests/broken_plugins, a fragment of the recorded error, a component it must not leave behind)
BROKEN_CASES = [
    ("raises_on_import", "RuntimeError: raises_on_import: this plugin is broken on purpose", None),
    ("registers_twice", "optimizer 'twice' is registered twice by plugin", ("optimizer", "twice-fine")),
    ("non_attrs_params", "params must be an attrs class", ("optimizer", "plain-params")),
    ("misspelled_hook", "unknown hook jaxyard_register_optimiser; did you mean jaxyard_register_optimizers?", ("optimizer", "misspelled")),
    ("no_default", "parameter 'depth' of NoDefaultParams needs a default", ("model", "no-default")),
    ("hook_raises", "ValueError: hook_raises: registration failed on purpose", None),
    ("wrong_hook_args", "{'reg'}", ("optimizer", "wrong-args")),  # pluggy's own wording varies by release
    ("factory_missing_keyword",
     "loader 'seedless': factory(params) does not accept seed, which jaxyard passes; expected def factory(params, *, seed)",
     ("loader", "seedless")),
    ("param_without_type", "optimizer 'untyped': parameter 'rate' of UntypedParams needs a type annotation", ("optimizer", "untyped")),
    ("traced_integer", "parameter 'period' of TracedIntParams is traced=True but of type int: only float parameters", ("scheduler", "traced-int")),
    ("param_without_doc", "optimizer 'undocumented': parameter 'rate' of UndocumentedParams needs a doc", ("optimizer", "undocumented")),
    ("undecorated_hook", "defines jaxyard_register_optimizers without the @jaxyard.hookimpl decorator", ("optimizer", "undecorated")),
]


def clean_environ(**extra: str) -> dict[str, str]:
    """os.environ without JAXYARD_* variables, plus ``extra`` (for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXYARD_")}
    env.update(JAXYARD_NO_COMPILE_CACHE="1", **extra)
    return env


def assert_one_line_error(result, *fragments: str, exit_code: int | None = 2) -> str:
    """The CLI failed cleanly: the exit code, one ``Error:`` line on stderr naming ``fragments``."""
    if exit_code is None:
        assert result.exit_code != 0, result.stdout
    else:
        assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr + result.stdout
    assert err.startswith("Error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def fake_entry_points(monkeypatch, *extra):
    """Make importlib.metadata.entry_points (as core/registry/loading.py calls it) also return ``extra``."""
    real = metadata.entry_points

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        return found + list(extra) if kwargs.get("group") == "jaxyard" else found

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def fake_entry_point(name, module, dist="broken-dist", version="6.6.6"):
    """What the registry reads of an entry point: name, value, dist and load()."""
    real = metadata.EntryPoint(name, module, "jaxyard")
    return types.SimpleNamespace(name=name, value=module, group="jaxyard", load=real.load, dist=types.SimpleNamespace(name=dist, version=version))

"""Paths and assertions shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "jaxyard-example-plugin"
EXAMPLE_DIST = "jaxyard-example-plugin"
BROKEN = Path(__file__).resolve().parent / "broken_plugins"
LOCAL = Path(__file__).resolve().parent / "plugins_local"
PAUSE = LOCAL / "pause.py"  # holds a run at a point until the test says go (its docstring)
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy", "matplotlib")

# The suite's one tiny workload, as --set values: 100 training examples (batches of 16: 7 steps an
# epoch, the last one partial) of 16 features in 4 classes, an MLP of one hidden layer of 32 units
# (676 parameters), 2 warmup steps. A test that needs more data or epochs overrides keys with tiny().
TINY = (
    "loader.train_size=100",
    "loader.val_size=50",
    "loader.test_size=50",
    "loader.features=16",
    "loader.classes=4",
    "model.hidden_dims=32",
    "run.warmup_steps=2",
)


def tiny(*overrides: str, without: Iterable[str] = ()) -> list[str]:
    """TINY with ``overrides`` ("KIND.KEY=VALUE") replacing its values of the same keys, less the
    keys or whole kinds named in ``without`` (``without=["model"]`` for a run of another model than
    mlp, whose parameter hidden_dims is)."""
    drop = {*without, *(o.split("=", 1)[0] for o in overrides)}
    kept = [s for s in TINY if s.split("=", 1)[0] not in drop and s.split(".", 1)[0] not in drop]
    return [*kept, *overrides]


def as_options(sets: Iterable[str]) -> list[str]:
    """``--set`` values as command-line arguments."""
    return [x for s in sets for x in ("--set", s)]

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
    """os.environ without JAXYARD_* variables, plus ``extra`` (for subprocesses). The suite's
    compile cache (conftest.py) reaches them through XDG_CACHE_HOME and JAX_COMPILATION_CACHE_DIR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXYARD_")}
    env.update(extra)
    return env


def wait_for(condition: Callable[[], object], proc: subprocess.Popen | None = None, *, what: str) -> None:
    """Poll ``condition()`` until it holds: an event (a file appearing, a line written), never a
    deadline; a hang is stopped by the suite's per-test timeout (pytest-timeout) with a traceback.
    Fails at once, with the process's output, when ``proc`` ends first."""
    while not condition():
        if proc is not None and proc.poll() is not None:
            if condition():  # it happened just before the process ended
                return
            out = [s[-3000:] if isinstance(s, str) else s for s in proc.communicate()]
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: {out}")
        time.sleep(0.01)


# One step after another in a fresh interpreter (this one has jax loaded): each step's exit status
# (SystemExit caught), which of the heavy modules are imported by its end, and its `result` variable.
_PROBE = """
import json, sys
steps, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
namespace, report = {"__name__": "__probe__"}, []
for step in steps:
    code = 0
    try:
        exec(step, namespace)
    except SystemExit as exit:
        code = exit.code or 0
    loaded = sorted(m for m in heavy if m in sys.modules)
    report.append({"exit": code, "heavy": loaded, "result": namespace.pop("result", None)})
sys.stdout.flush()
sys.__stdout__.write("\\nPROBE " + json.dumps(report) + "\\n")
"""


def probe_imports(steps: Sequence[str], *, heavy: Sequence[str] = HEAVY, cwd: str | os.PathLike | None = None,
                  env: dict[str, str] | None = None) -> list[dict]:
    """Run ``steps`` in one fresh interpreter, in order: a dotted module name is imported, anything
    else is Python code (it may set ``result``, JSON, to report a value). Returns per step
    ``{"exit": code, "heavy": [the modules of heavy imported so far], "result": ...}`` (a package
    is imported with any module of it: "jax" covers jax.numpy)."""
    code = [f"import {s}" if s.replace(".", "").replace("_", "").isalnum() else s for s in steps]
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(code), json.dumps(list(heavy))], cwd=cwd,
                          env=clean_environ() if env is None else env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("PROBE "))


def compiled_during(fn: Callable[[], object]) -> tuple[object, list[str]]:
    """``(fn(), the names of the XLA programs compiled while it ran)``: a program compiled twice (a
    new input shape) is named twice. JAX reports a compilation read from the persistent cache too."""
    import jax

    names: list[str] = []

    def listen(event, secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        return fn(), names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


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


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed): its type, size and modification time; two
    snapshots differ where anything was written (:func:`changed`)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = (Path(folder) / name).lstat()
            out[str((Path(folder) / name).relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def changed(before: dict, after: dict) -> list[str]:
    """The paths two :func:`snapshot` s disagree on: written, made or removed in between."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

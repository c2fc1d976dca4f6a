"""Shared fixtures: the example plugin installed, a clean JAXYARD_* environment, one compile cache
for the whole suite, CLI helpers."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import tomllib
import types
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import EXAMPLE, EXAMPLE_DIST, TINY, as_options

# Several test processes share one accelerator (xdist workers, the CLI subprocesses): JAX's default
# of taking 75% of a GPU's memory per process would leave the second one nothing.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


# --- the example plugin, installed as a real distribution --------------------------------------


def _example_is_current() -> bool:
    """Installed, and either editable from this checkout or a copy of the current source."""
    try:
        dist = metadata.distribution(EXAMPLE_DIST)
    except metadata.PackageNotFoundError:
        return False
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable"):
        return direct.get("url", "").rstrip("/").endswith(EXAMPLE.as_posix())
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    installed_eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "jaxyard"}
    if dist.version != project["version"] or installed_eps != project["entry-points"]["jaxyard"]:
        return False
    module_files = [f for f in dist.files or () if f.parts[0] == "jaxyard_example_plugin" and f.suffix == ".py"]
    sources = {p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.glob("jaxyard_example_plugin/*.py")}
    if {f.as_posix() for f in module_files} != sources:
        return False
    return all(Path(f.locate()).read_bytes() == (EXAMPLE / f).read_bytes() for f in module_files)


@functools.cache
def ensure_example_plugin() -> str:
    """The installed version of examples/jaxyard-example-plugin, which the README's test command
    installs. The suite never installs anything into the environment it runs in: a missing or
    stale install stops it with the command to run. Checked before collection
    (``pytest_sessionstart``): the registry-wide tests are parametrized over every entry."""
    if not _example_is_current():
        raise pytest.UsageError(
            f"{EXAMPLE_DIST} is not installed from this checkout, or its installed copy is out of date: "
            f"run `python -m pip install ./examples/jaxyard-example-plugin` (the README's test command does), then pytest again"
        )
    return metadata.version(EXAMPLE_DIST)


def pytest_sessionstart(session):
    ensure_example_plugin()


# --- one compile cache for the whole suite --------------------------------------------------------

# The suite's cache directory, made once by the process that starts pytest; xdist's workers and every
# subprocess inherit the variables below, so a program compiled once is read back everywhere else.
SUITE_CACHE = "PYTEST_JAXYARD_SUITE_CACHE"
FAST_COMPILE = "--xla_backend_optimization_level=0"
_MADE_HERE = pytest.StashKey[str]()  # the cache directory this process made (and removes at the end)


def pytest_configure(config):
    if not os.environ.get(SUITE_CACHE):  # the controller (or a run without xdist): the workers inherit it
        os.environ[SUITE_CACHE] = config.stash[_MADE_HERE] = tempfile.mkdtemp(prefix="jaxyard-tests-cache-")
    cache = Path(os.environ[SUITE_CACHE])
    jax_cache = cache / "jaxyard" / "jax"  # where the CLI puts it under XDG_CACHE_HOME (cli._compile_cache)
    values = {
        "XDG_CACHE_HOME": str(cache),  # the CLI's processes, and the in-process CLI tests
        # the library's train() in this process and in subprocesses (JAX reads these when imported),
        # every program cached, as the CLI's cache does (core/train/build.py enable_compile_cache)
        "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    # XLA's CPU backend, unoptimised (LLVM at -O0): the suite compiles hundreds of small programs and runs
    # each for milliseconds, so compiling is most of its time; unoptimised, it is about a quarter less
    # (measured: 35.4 s -> 26.0 s for tests/train/test_engine.py, test_tasks_train.py and tests/examples).
    # Every run of the suite, in this process and in its subprocesses, compiles alike, so its
    # comparisons (resume, devices, processes) compare like with like. A user's XLA_FLAGS are kept.
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        values["XLA_FLAGS"] = f"{flags} {FAST_COMPILE}".strip()
    os.environ.update(values)
    if "jax" in sys.modules:  # imported before this hook (a plugin): set what it read at import
        import jax

        jax.config.update("jax_compilation_cache_dir", str(jax_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _MADE_HERE in config.stash:
        shutil.rmtree(config.stash[_MADE_HERE], ignore_errors=True)
        del os.environ[SUITE_CACHE]


def pytest_collection_modifyitems(config, items):
    """The modules whose tests share an expensive fixture on one worker (xdist_group) first, then
    those with slow tests, then the rest, each module's tests in their order: the two workers
    start on the long pieces and end on short ones, instead of one waiting for the other."""
    weight: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        rank = 0 if item.get_closest_marker("xdist_group") else 1 if item.get_closest_marker("slow") else 2
        weight[module] = min(weight.get(module, 2), rank)
    items.sort(key=lambda item: weight[item.nodeid.split("::")[0]])  # stable: a module's order is kept


@pytest.fixture(scope="session", autouse=True)
def example_plugin() -> str:
    """The installed version of jaxyard-example-plugin."""
    return ensure_example_plugin()


# --- environment --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No JAXYARD_* settings leak in from the shell (the suite's compile cache stays on)."""
    for var in list(os.environ):
        if var.startswith("JAXYARD_"):
            monkeypatch.delenv(var)


# --- CLI helpers --------------------------------------------------------------------------------


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def run_cli(cli_runner):
    """``run_cli(["list", "--json"], env={...})``: invoke the click group in-process.

    ``result.stdout`` and ``result.stderr`` are kept apart; exceptions other than SystemExit
    propagate as ``result.exception`` (the CLI must never raise one).
    """
    from jaxyard.cli import cli

    def run(args, **kwargs):
        return cli_runner.invoke(cli, [str(a) for a in args], **kwargs)

    return run


@pytest.fixture
def cli_json(run_cli):
    """``cli_json(["list", "--json"])``: run, assert exit 0 with nothing on stderr, parse stdout."""

    def run(args, **kwargs):
        result = run_cli(args, **kwargs)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        assert result.stderr == "", result.stderr
        return json.loads(result.stdout)

    return run


# --- a finished run -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _finished_runs(tmp_path_factory):
    """The tiny runs behind ``finished_run``, trained once per worker and checkpointer."""
    from jaxyard.cli import cli

    made: dict[str, types.SimpleNamespace] = {}

    def make(checkpointer: str) -> types.SimpleNamespace:
        if checkpointer not in made:
            out = tmp_path_factory.mktemp(f"finished-{checkpointer}") / "run"
            args = ["run", "--out", str(out), "--epochs", "2", "--batch-size", "16", "--logger", "csv", "--checkpointer", checkpointer,
                    *as_options(TINY)]
            unset = {var: None for var in os.environ if var.startswith("JAXYARD_")}  # clean_env is not set up yet
            result = CliRunner().invoke(cli, args, env=unset)
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
            made[checkpointer] = types.SimpleNamespace(dir=out, stdout=result.stdout)
        return made[checkpointer]

    return make


@pytest.fixture
def finished_run(_finished_runs, tmp_path):
    """``finished_run(checkpointer="orbax")``: a copy of its own (``.dir``) of a finished run of the tiny
    workload through the CLI, 2 epochs in batches of 16 (7 steps an epoch), logged to jsonl and csv;
    ``.stdout``: what `run` printed into ``.source``. ``checkpointer="none"``: a run without checkpoints."""
    def copy(checkpointer: str = "orbax") -> types.SimpleNamespace:
        made = _finished_runs(checkpointer)
        target = tmp_path / f"finished-{checkpointer}"
        shutil.copytree(made.dir, target)
        return types.SimpleNamespace(dir=target, stdout=made.stdout, source=made.dir)

    return copy

"""Shared fixtures: the example plugin installed, a clean JAXYARD_* environment, CLI helpers."""

from __future__ import annotations

import functools
import json
import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import EXAMPLE, EXAMPLE_DIST

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


@pytest.fixture(scope="session", autouse=True)
def example_plugin() -> str:
    """The installed version of jaxyard-example-plugin."""
    return ensure_example_plugin()


# --- environment --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No JAXYARD_* settings leak in from the shell, and no persistent compile cache."""
    for var in list(os.environ):
        if var.startswith("JAXYARD_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("JAXYARD_NO_COMPILE_CACHE", "1")


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

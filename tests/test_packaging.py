"""The wheel built from the checkout holds one top-level package, `jaxyard`, and works on its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata

import pytest

from helpers import REPO, clean_environ

#: the version the wheel is built at: the checkout's own (never a number written here)
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# What a build must not see: build outputs and caches (the rest of the tree is copied as is, so a
# packaging mistake that would ship tests/, benchmarks/ or examples/ shows up).
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "*.whl")


pytestmark = pytest.mark.xdist_group("packaging")  # one worker builds the module's wheel


def _pip(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=clean_environ(), capture_output=True, text=True)


def _build_backend_missing() -> str | None:
    """Why the wheel cannot be built offline here (None: it can): pyproject's build backend,
    setuptools>=77 (which reads `license = "Apache-2.0"`), must be installed in this environment."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return "setuptools (pyproject's build backend) is not installed in this environment"
    if int(version.split(".")[0]) < 77:
        return f"setuptools {version} is installed; building jaxyard needs setuptools>=77 (pyproject's build-system)"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build a wheel of a copy of the checkout with this environment's setuptools: offline, never
    an isolated build that would fetch the backend from the network."""
    missing = _build_backend_missing()
    if missing:
        pytest.skip(f"the wheel is built offline only: {missing}")
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "out"
    shutil.copytree(REPO, src, ignore=IGNORE)
    proc = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [whl] = out.glob("jaxyard-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_has_only_the_jaxyard_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"jaxyard", f"jaxyard-{VERSION}.dist-info"}, top
    assert {"core", "plugins", "cli.py", "tests", "benchmarks", "examples"}.isdisjoint(top)
    assert "jaxyard/registry.toml" in names
    modules = ("__init__.py", "cli.py", "core/registry/loading.py", "core/registry/hookspecs.py", "plugins/optimizers.py", "plugins/checkpointers.py")
    for module in modules:
        assert f"jaxyard/{module}" in names, module
    assert not [n for n in names if n.startswith(("jaxyard/tests/", "jaxyard/benchmarks/", "jaxyard/examples/", "jaxyard/.venv/"))]
    assert "jaxyard = jaxyard.cli:main" in entry_points


@pytest.mark.slow
def test_wheel_works_on_its_own(wheel, tmp_path):
    """Installed from the wheel (not the checkout), the shipped registry.toml is found and list works."""
    target = tmp_path / "site"
    proc = _pip("install", "--no-deps", "--no-index", "--target", target, wheel, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probe = (
        "import json, jaxyard, jaxyard.core.registry.settings as s, jaxyard.core.registry.loading as r\n"
        "reg = r.build_registry(s.load_settings())\n"
        "print(json.dumps([jaxyard.__file__, str(s.shipped_registry()), r.metadata.version('jaxyard'), reg.names('optimizer')]))\n"
    )
    env = clean_environ(PYTHONPATH=str(target), JAXYARD_LOAD_PLUGINS="")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    module, registry_toml, version, optimizers = json.loads(proc.stdout)
    assert module.startswith(str(target)) and registry_toml == str(target / "jaxyard" / "registry.toml")
    assert version == VERSION and "adam" in optimizers

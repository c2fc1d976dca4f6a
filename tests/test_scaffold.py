"""The scaffold behind `jaxyard new-plugin`: what it writes and refuses, and (slow) that a generated
package with all six kinds installs, is listed through its entry point, trains and passes its own
conformance tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

import jaxyard
from jaxyard.core.kit.scaffold import write_plugin
from jaxyard.core.registry.entries import KINDS

from helpers import REPO, clean_environ


@pytest.mark.parametrize("name", ["", "Demo", "1abc", "my plugin", "a--b", "a-", "-a", "x" * 41, "opt.im"])
def test_refuses_invalid_names(tmp_path, name):
    with pytest.raises(jaxyard.UsageError) as info:
        write_plugin(tmp_path / "pkg", name)
    assert str(info.value).startswith(f"invalid plugin name {name!r}: use lower-case letters") and "\n" not in str(info.value)
    assert not (tmp_path / "pkg").exists()


def test_refuses_a_directory_that_is_not_empty_or_a_file(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("")
    for path, what in ((tmp_path / "full", "is not empty"), (tmp_path / "file", "is not a directory")):
        with pytest.raises(jaxyard.UsageError) as info:
            write_plugin(path, "demo")
        assert str(info.value) == f"{path} {what}; choose a new directory (--dir DIR)"
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert write_plugin(tmp_path / "empty", "demo") == tmp_path / "empty"  # an empty directory is fine


def test_refuses_unknown_kinds_and_builtin_names(tmp_path):
    with pytest.raises(jaxyard.UsageError, match="unknown kind 'optimiser'"):
        write_plugin(tmp_path / "a", "demo", kinds=["optimiser"])
    with pytest.raises(jaxyard.UsageError, match="optimizer 'adam' is built into jaxyard; choose another plugin name"):
        write_plugin(tmp_path / "b", "adam", kinds=["optimizer", "model"])
    write_plugin(tmp_path / "c", "adam", kinds=["models"])  # no built-in model is called adam


def test_writes_one_documented_component_per_kind_asked(tmp_path):
    pkg = write_plugin(tmp_path / "pkg", "my-model", kinds=["model", "logger"])
    files = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file())
    assert files == [".gitignore", "README.md", "pyproject.toml", "src/jaxyard_my_model/__init__.py",
                     "src/jaxyard_my_model/_model.py", "tests/test_plugin.py"]
    project = tomllib.loads((pkg / "pyproject.toml").read_text())
    assert project["project"]["name"] == "jaxyard-my-model"
    assert project["project"]["entry-points"]["jaxyard"] == {"my-model": "jaxyard_my_model"}
    source = (pkg / "src/jaxyard_my_model/__init__.py").read_text()
    assert "def jaxyard_register_models" in source and "def jaxyard_register_loggers" in source
    assert "jaxyard_register_optimizers" not in source and "import jax" not in source.replace("import jaxyard", "")
    for path in pkg.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")
    readme = (pkg / "README.md").read_text()
    assert "jaxyard run --model my-model --logger my-model --epochs 2" in readme and "python -m pytest -q" in readme
    assert 'parametrize_with_checks(distribution="jaxyard-my-model")' in (pkg / "tests/test_plugin.py").read_text()


# --- the real thing: installed (into a folder of its own on PYTHONPATH: the shared environment, and
# any test running beside this one, never see it) ------------------------------------------------

NAME = "scaffold-check"
DIST = f"jaxyard-{NAME}"


def _run(args, site=None, **kwargs):
    env = clean_environ()
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def _pip(*args):
    return _run([sys.executable, "-m", "pip", *args])


@pytest.mark.slow
def test_generated_plugin_installs_lists_trains_and_passes_its_own_tests(tmp_path):
    pkg = write_plugin(tmp_path / DIST, NAME, kinds=KINDS)
    site = tmp_path / "site"
    proc = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(pkg))
    if proc.returncode != 0:  # setuptools here cannot build it offline (no wheel package): let pip fetch a backend
        proc = _pip("install", "--no-deps", "--target", str(site), str(pkg))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    listing = _run([sys.executable, str(REPO / "cli.py"), "list", "--json"], site, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    ours = {(e["kind"], e["name"]) for e in json.loads(listing.stdout) if e["distribution"] == DIST}
    assert ours == {(kind, NAME) for kind in KINDS}

    chosen = [arg for kind in KINDS for arg in (f"--{kind}", NAME)]
    train = _run([sys.executable, str(REPO / "cli.py"), "run", *chosen, "--epochs", "2", "--out", str(tmp_path / "run")], site, cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr
    rows = (tmp_path / "run" / f"{NAME}-metrics.tsv").read_text().splitlines()
    assert rows[0].startswith("epoch\tstep\tlr") and [r.split("\t")[0] for r in rows[1:]] == ["1", "2"]
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps and (tmp_path / "run" / "checkpoints" / str(steps[-1]) / "manifest.json").is_file()
    best = _run([sys.executable, str(REPO / "cli.py"), "eval", str(tmp_path / "run"), "--checkpoint", "best"], site, cwd=tmp_path)
    assert best.returncode == 0 and "Test Accuracy" in best.stdout, best.stdout + best.stderr

    tests = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], site, cwd=pkg)
    summary = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr
    assert tests.returncode == 0 and "failed" not in summary, tests.stdout[-4000:] + tests.stderr
    assert int(summary.split(" passed")[0].split()[-1]) >= 50, summary  # one test per component and check

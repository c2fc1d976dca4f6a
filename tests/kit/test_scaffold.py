"""The scaffold behind `jaxyard new-plugin`: what it writes and refuses, and (slow) that a generated
package with all seven kinds and several components of a kind (`--model a --model b --task t`) is found
through its entry point, is listed, trains, evaluates and passes the conformance kit its own test file runs."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

import jaxyard
from jaxyard.core.kit import harness
from jaxyard.core.kit.scaffold import next_steps, write_plugin
from jaxyard.core.registry.entries import KINDS
from jaxyard.testing import check_component, checks_for


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
    tests = (pkg / "tests/test_plugin.py").read_text()
    assert "from jaxyard.testing import parametrize_with_checks" in tests and 'parametrize_with_checks(distribution="jaxyard-my-model")' in tests
    # the printed next step works as printed: the extra it installs has pytest, and it is what the README says
    assert [d for d in project["project"]["optional-dependencies"]["test"] if d.startswith("pytest")]
    assert "\npip install -e '.[test]' " in readme and "\npython -m pytest -q\n" in readme
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert next_steps(pkg) == f"cd {pkg} && pip install -e '.[test]' && python -m pytest -q"
    assert next_steps("my dir") == "cd 'my dir' && pip install -e '.[test]' && python -m pytest -q"


def test_writes_several_components_of_a_kind_each_under_its_name(tmp_path, run_cli):
    pkg = tmp_path / "pkg"
    args = ["new-plugin", "demo", "--model", "a", "--model", "b-net", "--task", "t", "--optimizer", "2x", "--kind", "model", "--dir", pkg]
    result = run_cli(args)
    assert result.exit_code == 0 and result.stdout.splitlines()[-1].startswith(f"Next: cd {pkg} && pip install"), (result.stdout, result.stderr)
    source = (pkg / "src/jaxyard_demo/__init__.py").read_text()
    registers = [line.strip() for line in source.splitlines() if line.strip().startswith("register(")]
    assert registers == [  # the kinds in jaxyard's order; in a kind, --kind's (named after the plugin) first
        'register("t", t_task, params=TTaskParams)',
        'register("2x", optimizer_2x_optimizer, params=Optimizer2xOptimizerParams)',
        'register("demo", demo_model, params=DemoModelParams)',
        'register("a", a_model, params=AModelParams)',
        'register("b-net", b_net_model, params=BNetModelParams)',
    ]
    assert source.count("def jaxyard_register_models(register):") == 1 and source.count("class BNetModelParams:") == 1
    assert "task 't' needs integer labels" in source and "PLUGIN" not in source and "Plugin" not in source
    assert "- task ``t``\n- optimizer ``2x``\n- model ``demo``\n- model ``a``\n- model ``b-net``\n" in source
    compile(source, "plugin", "exec")
    readme = (pkg / "README.md").read_text()
    assert "A jaxyard plugin: the task t, the optimizer 2x, the models demo, a and b-net." in readme
    assert "| model | `b-net` |" in readme and "jaxyard show model b-net\n" in readme
    assert "jaxyard run --task t --optimizer 2x --model demo --epochs 2" in readme
    assert 'skip={"task:t": {"check_name": "why"}}' in (pkg / "tests/test_plugin.py").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "My-Net"], "invalid model name 'My-Net': use lower-case letters, digits, '-' and '_', starting with a letter or digit"),
    (["--task", "a\nb"], "invalid task name 'a\\nb': use lower-case letters, digits, '-' and '_'"),
    (["--logger", "-x"], "invalid logger name '-x'"),
    (["--model", "a", "--model", "b", "--model", "a"], "two models named 'a': give each --model its own name"),
    (["--kind", "model", "--model", "demo"], "two models named 'demo' (--kind model already writes the model named after the plugin)"),
    (["--model", "a-b", "--model", "a_b"], "models 'a-b' and 'a_b' would have the same Python names (ABModelParams): rename one"),
    (["--optimizer", "adam"], "optimizer 'adam' is built into jaxyard; choose another --optimizer name"),
])
def test_refuses_bad_or_twice_given_component_names_in_one_line(tmp_path, run_cli, args, message):
    result = run_cli(["new-plugin", "demo", *args, "--dir", tmp_path / "pkg"])
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "pkg").exists()


def test_each_kind_alone_is_a_complete_module(tmp_path):
    """plugin.py's sections are cut apart right: one kind's module defines its hook and imports what it uses."""
    for kind in KINDS:
        pkg = write_plugin(tmp_path / kind, "solo", kinds=[kind])
        source = (pkg / "src/jaxyard_solo/__init__.py").read_text()
        hooks = [line for line in source.splitlines() if line.startswith("def jaxyard_register_")]
        assert hooks == [f"def jaxyard_register_{kind}s(register):"], hooks
        assert ("from pathlib import Path" in source) == (kind in ("checkpointer", "logger")) and "PLUGIN" not in source
        compile(source, kind, "exec")


# --- the real thing: found through a real entry point (a dist-info folder on sys.path: no build, no
# pip, no network), listed, trained and evaluated through the CLI, and checked by the kit --------

NAME = "scaffold-check"
DIST = f"jaxyard-{NAME}"
MODULE = "jaxyard_scaffold_check"
#: What the slow tests' package holds: components under their own names (--model a --model b --task t),
#: and one of each other kind named after the plugin (--kind): one generation for both ways.
MORE = [("model", "a"), ("model", "b"), ("task", "t")]
COMPONENTS = {(kind, NAME) for kind in KINDS if kind not in ("model", "task")} | set(MORE)


def write_dist_info(site: Path, dist: str, version: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """What pip leaves in site-packages for importlib.metadata to find: ``NAME-VERSION.dist-info/`` with
    METADATA and entry_points.txt (``{group: {name: value}}``). On sys.path, its entry points are real."""
    folder = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    groups = [f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items()) for group, eps in entry_points.items()]
    (folder / "entry_points.txt").write_text("\n".join(groups))
    return folder


@pytest.fixture
def generated(tmp_path, monkeypatch, run_cli):
    """The package ``new-plugin`` writes with the COMPONENTS, as if installed: its src/ and a
    dist-info on sys.path (which the kit's fresh-process import check passes on as PYTHONPATH); forgotten afterwards."""
    pkg = tmp_path / DIST
    options = [arg for kind, name in sorted(COMPONENTS) for arg in (("--kind", kind) if name == NAME else (f"--{kind}", name))]
    wrote = run_cli(["new-plugin", NAME, *options, "--dir", pkg])
    assert wrote.exit_code == 0, (wrote.stdout, wrote.stderr, wrote.exception)
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    write_dist_info(tmp_path / "site", DIST, project["version"], {"jaxyard": project["entry-points"]["jaxyard"]})
    for folder in (pkg / "src", tmp_path / "site"):
        monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(tmp_path)  # not the checkout: its registry.toml is not the user's
    harness.default_registry.cache_clear()  # the kit's registry of this process predates the package
    yield pkg
    harness.default_registry.cache_clear()
    for module in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[module]


@pytest.mark.slow
def test_generated_plugin_is_listed_and_trains(generated, run_cli, cli_json, tmp_path):
    listing = cli_json(["list", "--json"])
    assert {(e["kind"], e["name"]) for e in listing if e["distribution"] == DIST} == COMPONENTS

    run = tmp_path / "run"
    chosen = [arg for kind in KINDS for arg in (f"--{kind}", {"model": "b", "task": "t"}.get(kind, NAME))]
    train = run_cli(["run", *chosen, "--epochs", "2", "--out", run])
    assert train.exit_code == 0, (train.stdout[-2000:], train.stderr, train.exception)
    rows = (run / f"{NAME}-metrics.tsv").read_text().splitlines()
    assert rows[0].startswith("epoch\tstep\tlr") and [r.split("\t")[0] for r in rows[1:]] == ["1", "2"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(rows[0].split("\t"))  # the task's metrics
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
    assert steps and (run / "checkpoints" / str(steps[-1]) / "manifest.json").is_file()
    best = run_cli(["eval", run, "--checkpoint", "best"])
    assert best.exit_code == 0 and "Test Accuracy" in best.stdout, (best.stdout, best.stderr, best.exception)


@pytest.mark.slow
def test_generated_plugin_passes_the_kit(generated, tmp_path):
    # the package's own test file asks the kit for one test per component and check, all of them...
    spec = importlib.util.spec_from_file_location("generated_test_plugin", generated / "tests" / "test_plugin.py")
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    cases = tests.test_conformance.pytestmark[0].args[1]
    assert sorted(case.id for case in cases) == sorted(f"{kind}:{name}-{c.name}" for kind, name in COMPONENTS for c in checks_for(kind))
    assert not any(case.marks for case in cases)
    # ...and they pass: the same checks, run here rather than by a nested pytest
    registry = jaxyard.build_registry()
    for kind, name in sorted(COMPONENTS):
        where = tmp_path / "kit" / f"{kind}-{name}"
        results = check_component(f"{kind}:{name}", tier="full", distribution=DIST, registry=registry, tmp_path=where)
        assert results["entry_point"] == f"passed: entry point {NAME} = {MODULE} of {DIST} 0.1.0", results
        assert all(r.startswith(("passed", "skipped")) for r in results.values()), results

"""registry.toml layers, experiment files and `--set`, seen through `run --dry-run` (no training)."""

from __future__ import annotations

import tomllib

import pytest

from jaxyard.core.errors import UsageError
from jaxyard.core.registry import params as P
from jaxyard.core.registry.config import parse_set
from jaxyard.core.registry.run_settings import RunSettings
from jaxyard.core.registry.settings import load_settings, read_config_file, shipped_registry

from helpers import REPO, assert_one_line_error


@pytest.fixture
def dry_run(run_cli):
    """``dry_run(*args)``: the resolved configuration printed by ``run --dry-run``, parsed."""

    def run(*args, before=(), env=None):
        result = run_cli([*before, "run", *args, "--dry-run"], env=env)
        assert result.exit_code == 0, result.stderr
        assert result.stderr == ""
        return tomllib.loads(result.stdout)

    return run


def _write(path, text):
    path.write_text(text)
    return path


# --- the shipped defaults --------------------------------------------------------------------------


def test_shipped_registry_is_the_one_in_the_checkout():
    assert shipped_registry().resolve() == (REPO / "registry.toml").resolve()
    settings = load_settings()
    assert settings.builtin == ("tasks", "optimizers", "schedulers", "models", "loaders", "grain_loader", "hf_datasets", "checkpointers",
                                "loggers", "report", "guards", "early_stopping", "checkpointing", "curves", "profiler", "progress")
    assert settings.disabled == () and settings.local == ()
    assert settings.files == (str(shipped_registry()),)


def test_defaults(dry_run):
    config = dry_run()
    shipped = tomllib.loads((REPO / "registry.toml").read_text())
    assert set(shipped) == {"plugins"}  # each default has one home: its parameter class
    from jaxyard.core.registry.params import to_plain
    from jaxyard.core.registry.run_settings import RunSettings

    assert {k: v for k, v in config["run"].items() if k != "loggers"} == {
        k: v for k, v in to_plain(RunSettings()).items() if k != "loggers"}  # the CLI's defaults are the library's
    assert config["run"]["warmup_steps"] == 100 and config["run"]["epochs"] == 10
    assert set(config) == {"run", "task", "optimizer", "scheduler", "model", "loader", "checkpointer", "logger"}
    assert config["run"]["task"] == "classification"
    assert config["task"] == {"classification": {"label_smoothing": 0.0, "top_k": 1}}
    assert config["logger"] == {"jsonl": {"filename": "metrics.jsonl"}}
    assert config["optimizer"] == {"adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4}}
    assert config["model"]["mlp"]["hidden_dims"] == [256, 128]
    assert all(len(config[kind]) == 1 for kind in config if kind != "run")


# --- user registry file ----------------------------------------------------------------------------


USER_REGISTRY = """
[run]
optimizer = "sgd"
epochs = 3

[optimizer.sgd]
momentum = 0.5

[optimizer.adam]
b1 = 0.8
"""


def test_user_registry_via_option_and_env(dry_run, tmp_path):
    user = _write(tmp_path / "mine.toml", USER_REGISTRY)
    for config in (dry_run(before=["--registry", user]), dry_run(env={"JAXYARD_REGISTRY": str(user)})):
        assert config["run"]["optimizer"] == "sgd" and config["run"]["epochs"] == 3
        assert config["run"]["batch_size"] == 32  # untouched keys keep the shipped value
        assert config["optimizer"] == {"sgd": {"momentum": 0.5, "nesterov": False, "weight_decay": 0.0}}
    # merged table by table: the shipped [optimizer.adam] keeps the keys the user file does not set
    adam = dry_run("--optimizer", "adam", before=["--registry", user])["optimizer"]["adam"]
    assert adam == {"b1": 0.8, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4}


def test_registry_option_beats_env(dry_run, tmp_path):
    a = _write(tmp_path / "a.toml", "[run]\nepochs = 4\n")
    b = _write(tmp_path / "b.toml", "[run]\nepochs = 5\n")
    assert dry_run(before=["--registry", b], env={"JAXYARD_REGISTRY": str(a)})["run"]["epochs"] == 5
    assert load_settings(b).files[-1] == str(b)


def test_malformed_toml_names_file_and_line(run_cli, tmp_path):
    bad = _write(tmp_path / "bad.toml", "[run]\nepochs = 3\nseed = \n")
    err = assert_one_line_error(run_cli(["--registry", bad, "list"]), str(bad), "malformed TOML", "line 3")
    assert err.startswith(f"Error: {bad}: ")
    assert_one_line_error(run_cli(["list"], env={"JAXYARD_REGISTRY": str(bad)}), str(bad), "line 3")


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("[run]\nepochs = 3\nepocs = 4\n", ["line 3", "run: unknown key 'epocs'", "did you mean epochs", "valid keys: task, optimizer"]),
        ("[optimizer.adam]\nb1 = 0.5\n\n[run]\noptimizer = \"adam\"\nbatchsize = 4\n", ["line 6", "unknown key 'batchsize'", "batch_size"]),
        ("[plugins]\nbuiltins = []\n", ["line 2", "[plugins]: unknown key 'builtins'", "did you mean builtin?"]),
        ("# comment\n[optimizers.adam]\nb1 = 0.5\n", ["line 2", "top level: unknown key 'optimizers'", "did you mean optimizer?"]),
    ],
    ids=["run-key", "run-key-after-other-tables", "plugins-key", "table"],
)
def test_unknown_key_names_file_key_and_line(run_cli, tmp_path, text, fragments):
    bad = _write(tmp_path / "unknown.toml", text)
    assert_one_line_error(run_cli(["--registry", bad, "list"]), f"{bad}, line", *fragments)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ('[run]\nepochs = "ten"\n', ["line 2", "run.epochs: expected an integer, got 'ten'"]),
        ("[run]\nlearning_rate = true\n", ["line 2", "run.learning_rate: expected a number"]),
        ("[run]\noptimizer = 1\n", ["line 2", "run.optimizer: expected a string"]),
        ('[plugins]\ndisabled = "example"\n', ["line 2", "plugins.disabled must be a list of strings"]),
        ("run = 3\n", ["line 1", "'run' must be a table"]),
        ("[optimizer]\nadam = 1\n", ["line 2", "optimizer.adam must be a table of parameters"]),
    ],
)
def test_wrong_type_names_the_key(run_cli, tmp_path, text, fragments):
    bad = _write(tmp_path / "types.toml", text)
    assert_one_line_error(run_cli(["--registry", bad, "list"]), str(bad), *fragments)


def test_missing_registry_file(run_cli, tmp_path):
    assert_one_line_error(run_cli(["--registry", tmp_path / "nope.toml", "list"]), str(tmp_path / "nope.toml"), "no such file")


def test_wrong_component_parameter_in_registry_is_reported_when_used(run_cli, tmp_path):
    user = _write(tmp_path / "r.toml", "[optimizer.adam]\nb3 = 0.5\n")
    assert run_cli(["--registry", user, "list"]).exit_code == 0
    assert_one_line_error(run_cli(["--registry", user, "run", "--dry-run"]), "optimizer 'adam': unknown key 'b3'",
                          "valid keys: b1, b2, eps, weight_decay")


# --- experiment files (--config) --------------------------------------------------------------------


def test_config_file_is_merged_and_options_win(dry_run, tmp_path):
    exp = _write(
        tmp_path / "experiment.toml",
        '[run]\nepochs = 7\nbatch_size = 64\nlearning_rate = 0.01\noptimizer = "sgd"\n\n'
        '[optimizer.sgd]\nmomentum = 0.9\nnesterov = true\n\n[model.mlp]\nhidden_dims = [64]\n',
    )
    config = dry_run("--config", exp)
    assert (config["run"]["epochs"], config["run"]["batch_size"], config["run"]["learning_rate"]) == (7, 64, 0.01)
    assert config["optimizer"] == {"sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.0}}
    assert config["model"]["mlp"] == {"hidden_dims": [64], "activation": "relu", "dropout_rate": 0.1}
    config = dry_run("--config", exp, "--epochs", "2", "--lr", "0.5", "--set", "optimizer.momentum=0.8", "--set", "run.batch_size=16")
    assert (config["run"]["epochs"], config["run"]["batch_size"], config["run"]["learning_rate"]) == (2, 16, 0.5)
    assert config["optimizer"]["sgd"]["momentum"] == 0.8 and config["optimizer"]["sgd"]["nesterov"] is True


def test_config_file_over_user_registry(dry_run, tmp_path):
    user = _write(tmp_path / "registry.toml", "[run]\nepochs = 3\nseed = 9\n")
    exp = _write(tmp_path / "exp.toml", "[run]\nepochs = 4\n")
    config = dry_run("--config", exp, before=["--registry", user])
    assert config["run"]["epochs"] == 4 and config["run"]["seed"] == 9


def test_config_file_may_not_choose_plugins(run_cli, tmp_path):
    exp = _write(tmp_path / "exp.toml", '[plugins]\nlocal = ["x.py"]\n')
    assert_one_line_error(run_cli(["run", "--config", exp, "--dry-run"]), str(exp), "unknown key 'plugins'")


def test_bad_config_file(run_cli, tmp_path):
    exp = _write(tmp_path / "exp.toml", "[run]\nepochs = 0\n")
    assert_one_line_error(run_cli(["run", "--config", exp, "--dry-run"]), "epochs", "must be >= 1")
    assert_one_line_error(run_cli(["run", "--config", tmp_path / "missing.toml", "--dry-run"]), "missing.toml", "no such file")


def test_dry_run_output_round_trips(run_cli, tmp_path):
    first = run_cli(["run", "--optimizer", "sgd", "--set", "optimizer.momentum=0.9", "--set", "model.hidden_dims=32,16", "--dry-run"])
    assert first.exit_code == 0
    exp = _write(tmp_path / "resolved.toml", first.stdout)
    second = run_cli(["run", "--config", exp, "--dry-run"])
    assert second.exit_code == 0 and second.stdout == first.stdout


# --- --set -------------------------------------------------------------------------------------------


def test_set_values(dry_run):
    config = dry_run("--optimizer", "sgd", "--set", "optimizer.momentum=0.9", "--set", "optimizer.nesterov=true")
    assert config["optimizer"]["sgd"] == {"momentum": 0.9, "nesterov": True, "weight_decay": 0.0}
    assert dry_run("--set", "model.hidden_dims=512,256,128")["model"]["mlp"]["hidden_dims"] == [512, 256, 128]
    assert dry_run("--set", "model.hidden_dims=[64, 32]")["model"]["mlp"]["hidden_dims"] == [64, 32]
    assert dry_run("--set", "model.hidden_dims=8")["model"]["mlp"]["hidden_dims"] == [8]
    assert dry_run("--set", "model.activation=gelu")["model"]["mlp"]["activation"] == "gelu"
    run = dry_run("--set", "run.epochs=2", "--set", "run.monitor=val_acc")["run"]
    assert (run["epochs"], run["monitor"]) == (2, "val_acc")
    assert dry_run("--set", "loader.train_size=1e3")["loader"]["synthetic"]["train_size"] == 1000  # lossless float -> int


def test_set_applies_to_the_chosen_component(dry_run, run_cli):
    # optimizer.momentum belongs to sgd; with the default adam it is an unknown key
    assert_one_line_error(run_cli(["run", "--set", "optimizer.momentum=0.9", "--dry-run"]), "optimizer 'adam': unknown key 'momentum'",
                          "valid keys: b1, b2, eps, weight_decay")
    assert dry_run("--set", "optimizer.b1=0.5")["optimizer"]["adam"]["b1"] == 0.5


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "optimizer.bogus=1"], ["optimizer 'adam': unknown key 'bogus'", "valid keys: b1, b2, eps, weight_decay"]),
        (["--set", "optimizer.b=1"], ["unknown key 'b'"]),
        (["--set", "run.epoch=3"], ["run: unknown key 'epoch'", "did you mean epochs", "valid keys:"]),
        (["--optimizer", "sgd", "--set", "optimizer.momentum=abc"], ["optimizer 'sgd'.momentum: expected a number, got 'abc'"]),
        (["--set", "run.epochs=2.5"], ["run.epochs: expected an integer, got 2.5"]),
        (["--set", "model.hidden_dims=a,b"], ["hidden_dims: expected an integer, got 'a'"]),
        (["--set", "model.hidden_dims=0,4"], ["hidden_dims", "positive layer sizes"]),
        (["--set", "model.activation=swish"], ["activation"]),
        (["--optimizer", "sgd", "--set", "optimizer.nesterov=maybe"], ["nesterov: expected true or false"]),
        (["--optimizer", "sgd", "--set", "optimizer.nesterov=true"], ["nesterov", "needs momentum > 0"]),
        (["--lr", "-1"], ["learning_rate", "must be > 0"]),
        (["--lr", "0"], ["learning_rate"]),
        (["--set", "model.dropout_rate=1"], ["model 'mlp'", "dropout_rate", "must be < 1"]),
        (["--set", "model.dropout_rate=1.5"], ["dropout_rate"]),
        (["--batch-size", "0"], ["batch_size", "must be >= 1"]),
        (["--epochs", "0"], ["epochs", "must be >= 1"]),
        (["--set", "optimizer.b1=1.0"], ["b1"]),
        (["--set", "optimizer.momentum"], ["--set 'optimizer.momentum': expected KIND.KEY=VALUE"]),
        (["--set", "momentum=0.9"], ["expected KIND.KEY=VALUE"]),
        (["--set", "optimiser.momentum=0.9"], ["unknown section 'optimiser'", "valid: run, task, optimizer"]),
    ],
)
def test_bad_values_are_one_line_errors(run_cli, args, fragments):
    result = run_cli(["run", *args, "--dry-run"])
    assert_one_line_error(result, *fragments)
    assert result.stdout == ""


# --- the pieces, directly ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("0.9", 0.9), ("3", 3), ("true", True), ("[1, 2]", [1, 2]), ("adam", "adam"), ('"x y"', "x y"), ("512,256", "512,256"), ("", "")],
)
def test_parse_value(text, value):
    assert P.parse_value(text) == value


def test_parse_set():
    """Values stay text until the parameter's type is known (a name may look like a number)."""
    section, key, value = parse_set("optimizer.momentum=0.9")
    assert (section, key, value) == ("optimizer", "momentum", "0.9") and isinstance(value, P.CommandLineText)
    assert P.coerce(value, float, where="x") == 0.9
    assert P.coerce(P.CommandLineText("2024"), str, where="x") == "2024"
    assert P.coerce(P.CommandLineText('"a b"'), str, where="x") == "a b"
    assert P.coerce(P.CommandLineText("1"), bool, where="x") is True
    assert parse_set(" run.out = runs/x ") == ("run", "out", "runs/x")
    assert parse_set("model.hidden_dims=1,2") == ("model", "hidden_dims", "1,2")
    with pytest.raises(UsageError, match="expected KIND.KEY=VALUE"):
        parse_set("optimizer=adam")


def test_build_reports_unknown_keys_and_types():
    assert P.build(RunSettings, {}, where="run") == RunSettings()
    with pytest.raises(UsageError, match=r"^run: unknown key 'epoch'; did you mean epochs\? \(valid keys: task, optimizer"):
        P.build(RunSettings, {"epoch": 1}, where="run")
    with pytest.raises(UsageError, match=r"^run\.seed: expected an integer, got 'x'$"):
        P.build(RunSettings, {"seed": "x"}, where="run")


def test_validator_type_errors_are_readable():
    import attrs

    @attrs.frozen
    class Untyped:  # no annotation to coerce with: attrs' instance_of validator refuses (a TypeError)
        size = P.param(1, "a size", validator=attrs.validators.instance_of(int))

    with pytest.raises(UsageError) as exc:
        P.build(Untyped, {"size": "3"}, where="thing")
    message = str(exc.value)
    assert message.startswith("thing: size = '3' is invalid: ") and "Attribute(" not in message


def test_read_config_file_checks_layout(tmp_path):
    ok = _write(tmp_path / "ok.toml", '[run]\nepochs = 2\n[optimizer.sgd]\nmomentum = 0.1\n')
    assert read_config_file(ok) == {"run": {"epochs": 2}, "optimizer": {"sgd": {"momentum": 0.1}}}
    with pytest.raises(UsageError, match="unknown key 'plugins'"):
        read_config_file(_write(tmp_path / "p.toml", "[plugins]\nlocal = []\n"))
    assert read_config_file(tmp_path / "p.toml", allow_plugins=True) == {"plugins": {"local": []}}


def test_a_renamed_run_key_still_reads(tmp_path, dry_run):
    """run.out became run.runs_dir (--out names one run's directory): an old run's config.toml and
    old --set spellings still read, as the new name."""
    old = _write(tmp_path / "old.toml", '[run]\nout = "elsewhere"\nepochs = 2\n')
    config = dry_run("--config", str(old))
    assert config["run"]["runs_dir"] == "elsewhere" and "out" not in config["run"]
    assert dry_run("--set", "run.out=there")["run"]["runs_dir"] == "there"

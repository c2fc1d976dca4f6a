"""`list`, `show` and `plugins`: JSON shapes, filters, aligned text, unknown names."""

from __future__ import annotations

from importlib import metadata

import pytest

from jaxyard.core.registry.entries import KINDS

from helpers import assert_one_line_error

VERSION = metadata.version("jaxyard")
ENTRY_KEYS = {"kind", "name", "qualified", "description", "plugin", "distribution", "version"}


# --- list ------------------------------------------------------------------------------------------


def test_list_json(cli_json):
    entries = cli_json(["list", "--json"])
    assert all(set(e) == ENTRY_KEYS for e in entries)
    assert [KINDS.index(e["kind"]) for e in entries] == sorted(KINDS.index(e["kind"]) for e in entries)
    for kind in KINDS:
        names = [e["name"] for e in entries if e["kind"] == kind]
        assert names == sorted(names) and names, kind
    adam = next(e for e in entries if (e["kind"], e["name"]) == ("optimizer", "adam"))
    assert adam["plugin"] == "jaxyard.plugins.optimizers" and adam["distribution"] == "jaxyard" and adam["description"]


def test_list_glob_pattern(cli_json, run_cli):
    assert [e["name"] for e in cli_json(["list", "optimizers", "adam*", "--json"])] == ["adam", "adamw"]
    assert [e["name"] for e in cli_json(["list", "optimizer", "*sgd", "--json"])] == ["sgd", "signsgd"]
    text = run_cli(["list", "optimizers", "adam*"]).stdout.splitlines()
    assert text[0] == "optimizers:" and [line.split()[0] for line in text[1:]] == ["adam", "adamw"]
    result = run_cli(["list", "optimizers", "nothing*"])
    assert result.exit_code == 0 and result.stdout == "No components match.\n"


@pytest.mark.parametrize("kind", [*KINDS, *(k + "s" for k in KINDS)])
def test_list_one_kind(cli_json, run_cli, kind):
    singular = kind.removesuffix("s") if kind.removesuffix("s") in KINDS else kind
    entries = cli_json(["list", kind, "--json"])
    assert entries and {e["kind"] for e in entries} == {singular}
    headers = [line for line in run_cli(["list", kind]).stdout.splitlines() if not line.startswith(" ")]
    assert headers == [f"{singular}s:"]


def test_list_unknown_kind(run_cli):
    result = run_cli(["list", "optimisers"])
    assert_one_line_error(result, "unknown kind 'optimisers'", "did you mean optimizer?", "valid: task, optimizer, scheduler")


def test_list_text_is_aligned(run_cli, cli_json):
    result = run_cli(["list"])
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line for line in lines if not line.startswith("  ")] == [f"{k}s:" for k in KINDS]
    rows = [line for line in lines if line.startswith("  ")]
    entries = cli_json(["list", "--json"])
    assert len(rows) == len(entries)
    # the description starts in one column and the [plugin] column is aligned, across every kind
    starts = {row.index(e["description"]) for row, e in zip(rows, entries, strict=True)}
    assert len(starts) == 1
    plugin_starts = {row.rindex("[") for row in rows}
    assert len(plugin_starts) == 1
    for row, e in zip(rows, entries, strict=True):
        assert row.split()[0] == e["name"] and row.endswith(f"[{e['plugin']}]")
        assert row == row.rstrip()


# --- show ------------------------------------------------------------------------------------------


def test_show_json(cli_json):
    shown = cli_json(["show", "optimizer", "sgd", "--json"])
    assert set(shown) == ENTRY_KEYS | {"params"}
    assert shown["params"] == [
        {"name": "momentum", "type": "float", "default": 0.0, "doc": "momentum coefficient (0: plain SGD)", "traced": False},
        {"name": "nesterov", "type": "bool", "default": False, "doc": "use Nesterov momentum (needs momentum > 0)", "traced": False},
        {"name": "weight_decay", "type": "float", "default": 0.0, "doc": "L2 penalty added to the gradient before the update (0: off)",
         "traced": False},
    ]
    adam = {p["name"]: p["traced"] for p in cli_json(["show", "optimizer", "adam", "--json"])["params"]}
    assert adam == {"b1": True, "b2": True, "eps": True, "weight_decay": False}  # zero switches it off: structural
    mlp = cli_json(["show", "models", "mlp", "--json"])
    hidden = next(p for p in mlp["params"] if p["name"] == "hidden_dims")
    assert hidden["default"] == [256, 128] and hidden["type"].startswith("tuple[int")
    assert cli_json(["show", "scheduler", "constant", "--json"])["params"] == []


def test_show_task_lists_its_metrics_and_their_directions(cli_json, run_cli):
    """What a task reports, with its configured parameters (top_k adds a metric)."""
    assert cli_json(["show", "task", "regression", "--json"])["metrics"] == {"loss": "min", "mse": "min", "mae": "min", "r2": "max"}
    text = run_cli(["show", "task", "classification"]).stdout
    assert "  metrics: loss (min), acc (max)\n" in text
    assert "metrics" not in cli_json(["show", "optimizer", "adam", "--json"])  # other kinds: no metrics key


def test_show_text_is_aligned(run_cli):
    result = run_cli(["show", "optimizer", "adam"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("optimizer adam: Adam")
    assert lines[1] == f"  plugin: jaxyard.plugins.optimizers (jaxyard {VERSION})"
    assert lines[2] == "  parameters:"
    rows = lines[3:]
    assert [r.split()[0] for r in rows] == ["b1", "b2", "eps", "weight_decay"]
    for column in ("float", "= "):
        assert len({r.index(column) for r in rows}) == 1, column
    docs = ["decay rate of the first-moment", "decay rate of the second-moment", "added to the denominator", "L2 penalty"]
    assert len({r.index(d) for r, d in zip(rows, docs, strict=True)}) == 1
    assert run_cli(["show", "scheduler", "constant"]).stdout.splitlines()[-1] == "  parameters: none"


def test_show_run(cli_json, run_cli):
    shown = cli_json(["show", "run", "--json"])
    names = [p["name"] for p in shown["params"]]
    assert {"optimizer", "epochs", "batch_size", "learning_rate", "seed", "runs_dir"} <= set(names)
    assert all(p["doc"] and p["type"] for p in shown["params"])
    assert "epochs" in run_cli(["show", "run"]).stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["show", "optimizer", "adamx"],
         ["unknown optimizer 'adamx'", "did you mean adam, adamw?", "valid: adafactor, adam, adamw, lamb, lion, rmsprop, sgd, signsgd"]),
        (["show", "optimizers", "sdg"], ["unknown optimizer 'sdg'", "did you mean sgd", "valid: "]),
        (["show", "model", "resnet"], ["unknown model 'resnet'", "valid: cnn, logreg, mlp, rnn, transformer"]),
        (["show", "optimiser", "adam"],
         ["unknown kind 'optimiser'", "did you mean optimizer?", "valid: task, optimizer, scheduler, model, loader, checkpointer, logger"]),
        (["run", "--optimizer", "adamx", "--dry-run"], ["unknown optimizer 'adamx'", "did you mean adam, adamw?", "valid: "]),
        (["run", "--scheduler", "cosin", "--dry-run"],
         ["unknown scheduler 'cosin'", "did you mean cosine", "constant, cosine, exponential, linear, warmup"]),
        (["run", "--loader", "mnist", "--dry-run"],
         ["unknown loader 'mnist'", "valid: csv, datasets, digits, grain, multilabel, npz, regression, synthetic, text, tokens"]),
    ],
)
def test_unknown_names(run_cli, args, fragments):
    result = run_cli(args)
    assert_one_line_error(result, *fragments)
    assert result.stdout == ""


def test_show_without_name(run_cli):
    result = run_cli(["show", "optimizer"])
    assert result.exit_code == 2 and "missing NAME" in result.stderr and "Traceback" not in result.stderr


# --- plugins and help ------------------------------------------------------------------------------


def test_plugins_text(run_cli):
    result = run_cli(["plugins"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"jaxyard.plugins.tasks  [builtin, jaxyard {VERSION}]  ok"
    assert lines[1] == "  hooks: jaxyard_register_tasks"
    assert lines[2].startswith("  components: task:classification")
    assert lines[3] == f"jaxyard.plugins.optimizers  [builtin, jaxyard {VERSION}]  ok"
    assert lines[4] == "  hooks: jaxyard_register_optimizers"
    assert lines[5].startswith("  components: optimizer:adam, optimizer:adamw, optimizer:sgd")


def test_plugins_json_lists_builtins_in_order(cli_json):
    plugins = cli_json(["plugins", "--json"])
    assert [p["name"] for p in plugins[:9]] == [f"jaxyard.plugins.{m}" for m in (
        "tasks", "optimizers", "schedulers", "models", "loaders", "grain_loader", "hf_datasets", "checkpointers", "loggers")]
    assert all(p["error"] is None and p["hooks"] for p in plugins)
    by_name = {p["name"]: p for p in plugins}
    assert by_name["jaxyard.plugins.loggers"]["components"] == ["logger:jsonl", "logger:csv", "logger:tensorboard", "logger:mlflow", "logger:wandb"]
    assert by_name["jaxyard.plugins.report"]["components"] == []  # an event plugin: hooks only
    assert "jaxyard_on_epoch_end" in by_name["jaxyard.plugins.report"]["hooks"]


def test_help_and_version(run_cli):
    result = run_cli(["--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "plugins", "run", "resume", "eval"):
        assert f"  {command} " in result.stdout
    assert "--strict-plugins" in result.stdout and "JAXYARD_REGISTRY" in result.stdout
    assert run_cli(["--version"]).stdout.strip().endswith(VERSION)
    assert "--set KIND.KEY=VALUE" in run_cli(["run", "--help"]).stdout


def test_help_summaries_are_not_cut(run_cli):
    result = run_cli(["--help"])
    commands = result.stdout.split("Commands:")[1].strip().splitlines()
    from jaxyard.cli import cli

    assert len(commands) == len(cli.commands) and not any(line.rstrip().endswith("...") for line in commands), commands


def test_show_with_a_component_name_for_the_kind_names_the_command(run_cli):
    assert_one_line_error(run_cli(["show", "mlp"]), "'mlp' is not a kind but a model: jaxyard show model mlp")
    assert_one_line_error(run_cli(["show", "adamw"]), "'adamw' is not a kind but an optimizer: jaxyard show optimizer adamw")


def test_schedule_with_steps_per_epoch_reads_no_data(run_cli):
    result = run_cli(["schedule", "--loader", "npz", "--scheduler", "constant", "--steps-per-epoch", "10", "--points", "2"])
    assert result.exit_code == 0, result.output  # npz would need a file: the loader was not called
    assert result.stdout.splitlines()[0] == "constant: peak 0.001, warmup 0 steps, 100 steps (10 epochs of 10)"

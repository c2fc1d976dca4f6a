"""Data files stay data: an experiment file (`run --config`) or a run directory's config.toml cannot
make jaxyard write outside the run directory or send anything off it.

The two subprocess tests look from outside jaxyard: a sitecustomize.py installs an audit hook
(``sys.addaudithook``) that records every socket connection, name lookup and started process, and a
snapshot of the sandbox (HOME, the working directory, TMPDIR, the caches) taken before and after
shows every path written.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.settings import dump_toml

from helpers import as_options, assert_one_line_error, changed, clean_environ, snapshot, tiny

SERVER = "http://jaxyard-hostile.invalid:5000"  # .invalid never resolves; a lookup of it is still recorded


def write_toml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(data))
    return path






# --- a path a component writes stays inside the run directory: any source ------------------------------

ESCAPES = [
    ("jsonl", "filename", "../escaped.jsonl"),
    ("csv", "filename", "TMP/escaped.csv"),
    ("jsonl", "filename", "~/escaped.jsonl"),
    ("tensorboard", "subdir", "logs/../../escaped"),
]


@pytest.mark.parametrize("logger, key, value", ESCAPES)
def test_a_data_file_cannot_make_a_logger_write_outside_the_run_directory(run_cli, tmp_path, monkeypatch, logger, key, value):
    monkeypatch.chdir(tmp_path)
    value = value.replace("TMP", str(tmp_path))
    hostile = write_toml(tmp_path / "hostile.toml", {"run": {"loggers": ["jsonl", logger]}, "logger": {logger: {key: value}}})
    before = snapshot(tmp_path)
    result = run_cli(["run", "--config", hostile, "--out", "run", "--epochs", "1", *as_options(tiny())])
    assert_one_line_error(result, str(hostile), f"{key} = {value!r}", "inside the run directory")
    assert changed(before, snapshot(tmp_path)) == []


@pytest.mark.parametrize("source", ["--set", "--registry"])
def test_the_rule_holds_whatever_gives_the_path(run_cli, tmp_path, source):
    if source == "--set":
        args = ["run", "--set", "logger.jsonl.filename=../escaped.jsonl", "--dry-run"]
    else:
        registry = write_toml(tmp_path / "registry.toml", {"logger": {"jsonl": {"filename": "../escaped.jsonl"}}})
        args = ["--registry", registry, "run", "--dry-run"]
    result = run_cli(args)
    assert_one_line_error(result, "filename = '../escaped.jsonl'", "inside the run directory")


def test_a_path_inside_the_run_directory_is_kept(run_cli):
    result = run_cli(["run", "--logger", "tensorboard", "--set", "logger.jsonl.filename=logs/../m.jsonl",
                      "--set", "logger.tensorboard.subdir=tb/events", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    config = tomllib.loads(result.stdout)
    assert config["logger"]["jsonl"]["filename"] == "logs/../m.jsonl"
    assert config["logger"]["tensorboard"]["subdir"] == "tb/events"


def test_a_logger_does_not_follow_a_link_out_of_the_run_directory(tmp_path):
    """A run directory is data too: a link in it (metrics.jsonl -> a file elsewhere) is refused when
    the logger is built, before anything is written through it."""
    from jaxyard.core.registry.config import Choice
    from jaxyard.core.registry.loading import build_registry
    from jaxyard.core.registry.params import build

    registry = build_registry()
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine\n")
    (run_dir / "metrics.jsonl").symlink_to(elsewhere / "precious.txt")
    (run_dir / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    (run_dir / "mlflow.db").symlink_to(elsewhere / "mlflow.db")
    for name in ("jsonl", "tensorboard", "mlflow"):
        entry = registry.get("logger", name)
        with pytest.raises(UsageError, match="outside the run directory") as err:
            Choice(entry, build(entry.params, {}, where=name)).create(directory=run_dir)
        assert "\n" not in str(err.value)
    assert (elsewhere / "precious.txt").read_text() == "mine\n" and sorted(p.name for p in elsewhere.iterdir()) == ["precious.txt"]


def test_resume_does_not_follow_a_checkpoints_link_out_of_the_run_directory(finished_run, tmp_path, run_cli):
    """The checkpoints folder the engine gives the checkpointer is checked as a logger's path is: a
    run directory whose checkpoints/ links elsewhere is refused before anything is written there."""
    run_dir, elsewhere = finished_run().dir, tmp_path / "elsewhere"
    shutil.move(run_dir / "checkpoints", elsewhere)
    (run_dir / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    result = run_cli(["resume", str(run_dir), "--epochs", "3"])
    assert_one_line_error(result, f"{run_dir / 'checkpoints'} leads to {elsewhere}, outside the run directory")
    assert changed(before, snapshot(elsewhere)) == []


# --- a destination off the run directory comes only from the user's explicit word ---------------------

DESTINATIONS = [
    ("mlflow", "tracking_uri", SERVER),
    ("mlflow", "tracking_uri", "sqlite:///TMP/elsewhere.db"),
    ("wandb", "mode", "online"),
]


@pytest.mark.parametrize("logger, key, value", DESTINATIONS)
def test_a_data_file_cannot_choose_a_destination(run_cli, tmp_path, monkeypatch, logger, key, value):
    monkeypatch.chdir(tmp_path)
    value = value.replace("TMP", str(tmp_path))
    hostile = write_toml(tmp_path / "hostile.toml", {"run": {"loggers": ["jsonl", logger]}, "logger": {logger: {key: value}}})
    before = snapshot(tmp_path)
    result = run_cli(["run", "--config", hostile, "--out", "run", "--epochs", "1", *as_options(tiny())])
    assert_one_line_error(result, str(hostile), f"[logger.{logger}] {key} = {value!r}", f"--set logger.{logger}.{key}={value}",
                          "registry file")
    assert changed(before, snapshot(tmp_path)) == []


@pytest.mark.parametrize("logger, key, value", DESTINATIONS)
def test_the_users_explicit_word_chooses_a_destination(run_cli, tmp_path, logger, key, value):
    """--set, a registry file, or the data file's value given again explicitly."""
    value = value.replace("TMP", str(tmp_path))
    data = write_toml(tmp_path / "experiment.toml", {"logger": {logger: {key: value}}})
    registry = write_toml(tmp_path / "registry.toml", {"logger": {logger: {key: value}}})
    explicit = ["--set", f"logger.{logger}.{key}={value}"]
    for args in (["run", *explicit], ["--registry", registry, "run"], ["run", "--config", data, *explicit],
                 ["--registry", registry, "run", "--config", data]):
        result = run_cli([*args, "--logger", logger, "--dry-run"])
        assert result.exit_code == 0, (args, result.stderr)
        assert tomllib.loads(result.stdout)["logger"][logger][key] == value


def test_a_data_files_destination_loses_to_an_explicit_one(run_cli, tmp_path):
    data = write_toml(tmp_path / "experiment.toml", {"logger": {"mlflow": {"tracking_uri": SERVER}}})
    result = run_cli(["run", "--config", data, "--logger", "mlflow", "--set", "logger.mlflow.tracking_uri=", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert tomllib.loads(result.stdout)["logger"]["mlflow"]["tracking_uri"] == ""


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_a_data_file_keeps_choosing_what_stays_local(run_cli, tmp_path, mode):
    data = write_toml(tmp_path / "experiment.toml", {"run": {"loggers": ["wandb", "mlflow"]}, "logger": {"wandb": {"mode": mode}}})
    result = run_cli(["run", "--config", data, "--dry-run"])
    assert result.exit_code == 0, result.stderr


def test_a_run_directorys_destination_needs_resume_set(tmp_path):
    """config.toml read back (resume) is data: its destination is refused naming `resume --set`, and
    given there it is the user's word."""
    from jaxyard.core.registry.config import resolve_config
    from jaxyard.core.registry.loading import build_registry
    from jaxyard.core.registry.settings import Settings

    run_dir = tmp_path / "run"
    config = write_toml(run_dir / "config.toml", {"run": {"loggers": ["jsonl", "mlflow"]}, "logger": {"mlflow": {"tracking_uri": SERVER}}})
    registry = build_registry()
    with pytest.raises(UsageError) as err:
        resolve_config(registry, Settings(), config_file=str(config), run_dir=run_dir)
    assert f"jaxyard resume {run_dir} --set logger.mlflow.tracking_uri={SERVER}" in str(err.value), err.value
    resolved = resolve_config(registry, Settings(), config_file=str(config), run_dir=run_dir, sets=[f"logger.mlflow.tracking_uri={SERVER}"])
    assert resolved.loggers[1].params.tracking_uri == SERVER
    unbuilt = resolve_config(registry, Settings(), config_file=str(config), run_dir=run_dir, unbuilt=("logger",))  # eval builds no loggers
    assert unbuilt.loggers[1].params.tracking_uri == SERVER


def test_show_says_which_parameters_write_or_send(cli_json, run_cli):
    jsonl = cli_json(["show", "logger", "jsonl", "--json"])["params"]
    assert jsonl[0]["name"] == "filename" and jsonl[0]["writes"] is True and "outside" not in jsonl[0]
    mlflow = {p["name"]: p for p in cli_json(["show", "logger", "mlflow", "--json"])["params"]}
    assert mlflow["tracking_uri"]["outside"] is True and "outside" not in mlflow["experiment"]
    text = run_cli(["show", "logger", "wandb"]).stdout
    assert "[a destination: --set or a registry file only]" in next(line for line in text.splitlines() if line.strip().startswith("mode"))


# --- at the OS level: a real process, its sockets and every file it writes -------------------------------

HOOK = """
import json, os, sys
_log = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def _record(event, args):
    if event == "socket.connect":
        os.write(_log, (json.dumps({{"event": event, "address": args[1]}}, default=str) + "\\n").encode())
    elif event == "socket.getaddrinfo":
        os.write(_log, (json.dumps({{"event": event, "address": [args[0], args[1]]}}, default=str) + "\\n").encode())
    elif event in ("subprocess.Popen", "os.posix_spawn", "os.exec"):
        os.write(_log, (json.dumps({{"event": event, "address": None, "what": str(args[0])}}) + "\\n").encode())
sys.addaudithook(_record)
"""


@pytest.fixture
def sandbox(tmp_path_factory):
    """``sandbox(args)`` runs ``python -m jaxyard.cli ARGS`` in a sandbox directory (its cwd, HOME,
    TMPDIR and caches), watched by an audit hook; returns (process, snapshot before, snapshot
    after, what the hook recorded). ``sandbox.root`` is the directory."""
    root = tmp_path_factory.mktemp("sandbox")
    hook_dir = tmp_path_factory.mktemp("hook")  # outside the sandbox, as is the hook's log
    log = hook_dir / "audit.jsonl"
    (hook_dir / "sitecustomize.py").write_text(HOOK.format(log=str(log)))
    env = clean_environ(
        HOME=str(root), TMPDIR=str(root / "tmp"), XDG_CACHE_HOME=str(root / ".cache"), XDG_CONFIG_HOME=str(root / ".config"),
        XDG_DATA_HOME=str(root / ".local"), PYTHONPATH=str(hook_dir), PYTHONDONTWRITEBYTECODE="1",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5",  # were it contacted: fail fast
    )
    (root / "tmp").mkdir()

    def run(args):
        before = snapshot(root)
        proc = subprocess.run([sys.executable, "-m", "jaxyard.cli", *map(str, args)], cwd=root, env=env, capture_output=True,
                              text=True, timeout=240)
        after = snapshot(root)
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, before, after, records

    run.root = root
    return run


def _off_machine(record: dict) -> bool:
    """A connection or lookup of something other than this machine (a process started counts too:
    the hook cannot see inside one that is not Python)."""
    address = record["address"]
    if record["event"] not in ("socket.connect", "socket.getaddrinfo"):
        return True
    if not isinstance(address, (list, tuple)):  # an AF_UNIX path
        return False
    host = str(address[0] or "")
    if host in ("", "localhost"):
        return False
    try:
        return not ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return True


def _assert_refused_cleanly(proc, before, after, records, *fragments):
    err = proc.stderr.strip()
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert err.startswith("Error: ") and "\n" not in err and "Traceback" not in proc.stderr + proc.stdout, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert [r for r in records if _off_machine(r)] == [], records
    assert changed(before, after) == [], "written in the sandbox"


HOSTILE = {
    "run": {"loggers": ["jsonl", "csv", "tensorboard", "mlflow", "wandb"]},
    "logger": {
        "jsonl": {"filename": "../escaped.jsonl"},
        "csv": {"filename": "ABSOLUTE"},
        "tensorboard": {"subdir": "../../escaped-tb"},
        "mlflow": {"tracking_uri": SERVER},
        "wandb": {"mode": "online"},
    },
}


def test_a_hostile_experiment_file_writes_nothing_and_connects_nowhere(sandbox):
    hostile = json.loads(json.dumps(HOSTILE).replace("ABSOLUTE", str(sandbox.root / "escaped.csv")))
    path = write_toml(sandbox.root / "experiments" / "hostile.toml", hostile)
    proc, before, after, records = sandbox(["run", "--config", path, "--out", "run", "--epochs", "1", *as_options(tiny())])
    _assert_refused_cleanly(proc, before, after, records, str(path), "filename = '../escaped.jsonl'")
    assert not (sandbox.root / "run").exists()


@pytest.mark.slow
def test_resume_of_a_hostile_run_directory_writes_nothing_and_connects_nowhere(sandbox, finished_run):
    """A real run's config.toml edited to name a tracking server and W&B online (and one more epoch,
    so that a resume would train): `resume` refuses in one line, before writing or connecting."""
    run_dir = Path(shutil.move(finished_run().dir, sandbox.root / "run"))
    config = tomllib.loads((run_dir / "config.toml").read_text())
    config["run"]["epochs"] += 1
    config["run"]["loggers"] += ["mlflow", "wandb"]
    config["logger"].update(mlflow={"tracking_uri": SERVER}, wandb={"mode": "online"})
    write_toml(run_dir / "config.toml", config)
    proc, before, after, records = sandbox(["resume", "run"])
    _assert_refused_cleanly(proc, before, after, records, f"tracking_uri = {SERVER!r}", "jaxyard resume run --set logger.mlflow.tracking_uri=")

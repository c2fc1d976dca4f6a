"""A run directory is data: what is planted in it (a link, an odd path, jaxyard's own file name
given to a logger) never makes jaxyard write outside it or over its own files.

Each link test plants a link to a file elsewhere and checks, by a snapshot of what lies there,
that nothing was written through it.
"""

from __future__ import annotations

import os
import stat

import pytest

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.params import inside
from jaxyard.core.store import rundir as rd

from helpers import as_options, assert_one_line_error, snapshot, tiny


@pytest.fixture
def victim(tmp_path):
    """A folder outside the run directory holding a file someone cares about; ``victim.unchanged()``."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious").write_text("mine\n")
    before = snapshot(folder)

    class Victim:
        path = folder
        file = folder / "precious"

        @staticmethod
        def unchanged() -> bool:
            return snapshot(folder) == before and (folder / "precious").read_text() == "mine\n"

    return Victim


# --- 1. the lock file ----------------------------------------------------------------------------------------


def test_resume_refuses_a_lock_file_that_is_a_link(finished_run, run_cli, victim):
    run_dir = finished_run().dir
    (run_dir / rd.LOCK).unlink(missing_ok=True)
    (run_dir / rd.LOCK).symlink_to(victim.file)
    result = run_cli(["resume", run_dir, "--epochs", "3"])
    assert_one_line_error(result, f"{run_dir / rd.LOCK} is a link", "remove the link")
    assert victim.unchanged()


def test_run_out_refuses_a_leftover_lock_file_that_is_a_link(run_cli, tmp_path, victim):
    out = tmp_path / "run"
    out.mkdir()
    (out / rd.LOCK).symlink_to(victim.path / "created-by-jaxyard")  # dangling: O_CREAT would make it
    result = run_cli(["run", "--out", out, "--epochs", "1", *as_options(tiny())])
    assert_one_line_error(result, f"{out / rd.LOCK} is a link", "remove the link")
    assert victim.unchanged() and sorted(p.name for p in out.iterdir()) == [rd.LOCK]


# --- 2. temporary files and appends ---------------------------------------------------------------------------


def test_write_atomic_never_writes_through_a_planted_temporary_file(tmp_path, victim):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml.tmp").symlink_to(victim.file)
    rd.write_atomic(run_dir / "config.toml", "[run]\n")
    assert (run_dir / "config.toml").read_text() == "[run]\n" and victim.unchanged()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((run_dir / "config.toml").stat().st_mode) == 0o666 & ~umask  # as open() made it
    with pytest.raises(RuntimeError):
        rd.write_atomic(run_dir / "summary.json", lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError("disk"))))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml", "config.toml.tmp"]  # nothing left behind


def _jsonl_logger(run_dir):
    from jaxyard.plugins.loggers import JsonlParams, jsonl

    return jsonl(JsonlParams(), directory=run_dir)


def _csv_logger(run_dir):
    from jaxyard.plugins.loggers import CsvParams, csv_logger

    return csv_logger(CsvParams(), directory=run_dir)


@pytest.mark.parametrize("make, name", [(_jsonl_logger, "metrics.jsonl"), (_csv_logger, "metrics.csv")], ids=["jsonl", "csv"])
def test_a_logger_does_not_append_through_a_link_planted_after_it_was_built(tmp_path, victim, make, name):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = make(run_dir)
    (run_dir / name).symlink_to(victim.file)
    with pytest.raises(UsageError, match="remove the link") as err:
        logger.log_epoch({"epoch": 1, "loss": 0.5})
    assert "\n" not in str(err.value) and victim.unchanged()


def test_open_append_and_record_changes_refuse_a_link(tmp_path, victim):
    from jaxyard.core.store.binding import CHANGES, Difference, record_changes

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "appended").symlink_to(victim.file)
    with pytest.raises(UsageError, match=f"{run_dir / 'appended'} is a link .*remove the link"):
        rd.open_append(run_dir / "appended")
    (run_dir / CHANGES).symlink_to(victim.path / "changes")
    with pytest.raises(UsageError, match="remove the link"):
        record_changes(run_dir, 7, [Difference("run.epochs", 2, 3)])
    assert victim.unchanged()
    fd = rd.open_append(run_dir / "fresh")
    os.write(fd, b"a\n")
    os.close(fd)
    assert (run_dir / "fresh").read_bytes() == b"a\n"


@pytest.mark.parametrize("name", ["mlflow.db-journal", "mlflow.db-wal"])
def test_the_mlflow_logger_refuses_a_link_for_sqlites_companion_files(tmp_path, victim, name):
    from jaxyard.plugins.loggers import MlflowParams, mlflow_logger

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).symlink_to(victim.file)
    with pytest.raises(UsageError, match="remove the link"):
        mlflow_logger(MlflowParams(), directory=run_dir)
    assert victim.unchanged()


# --- 4. a writes path names something inside the directory, and holds no null byte ----------------------------


@pytest.mark.parametrize("value", [".", "", "logs/..", "./"])
def test_a_writes_path_cannot_name_the_run_directory_itself(run_cli, value):
    result = run_cli(["run", "--logger", "csv", "--set", f"logger.csv.filename={value}", "--dry-run"])
    assert_one_line_error(result, f"filename = {value!r}", "the run directory itself")


def test_inside_refuses_the_directory_itself_and_a_null_byte(tmp_path):
    for value in (".", "", "a/.."):
        with pytest.raises(UsageError, match="names the run directory .* itself"):
            inside(tmp_path, value, what="logger.csv.filename")
    with pytest.raises(UsageError, match="null byte"):
        inside(tmp_path, "a\0b", what="logger.csv.filename")


def test_a_null_byte_in_a_writes_path_is_a_usage_error_naming_the_key(run_cli, tmp_path):
    hostile = tmp_path / "hostile.toml"
    hostile.write_text('[logger.jsonl]\nfilename = "m\\u0000.jsonl"\n')
    result = run_cli(["run", "--config", hostile, "--dry-run"])
    assert_one_line_error(result, "filename = 'm\\x00.jsonl'", "null byte")


# --- 5. jaxyard's own names, and two components writing one path ---------------------------------------------


@pytest.mark.parametrize("value", ["config.toml", "./summary.json", ".jaxyard.lock", "checkpoints", "checkpoints/m.jsonl",
                                   "changes.jsonl", "components.json", "training_curves.png", "profile/x", "mlflow.db",
                                   "mlflow.db-journal", "config.toml.bak",
                                   "wandb", "tensorboard/m.jsonl"])
def test_a_writes_path_cannot_name_what_jaxyard_writes(run_cli, value):
    result = run_cli(["run", "--set", f"logger.jsonl.filename={value}", "--dry-run"])
    assert_one_line_error(result, f"filename = {value!r}", "jaxyard's own")


def test_a_logger_keeps_its_own_default_name(run_cli):
    result = run_cli(["run", "--logger", "tensorboard", "--set", "logger.tensorboard.subdir=./tensorboard", "--dry-run"])
    assert result.exit_code == 0, result.stderr


def test_two_components_cannot_write_the_same_path(run_cli):
    result = run_cli(["run", "--logger", "csv", "--set", "logger.csv.filename=./metrics.jsonl", "--dry-run"])
    assert_one_line_error(result, "logger.csv.filename = './metrics.jsonl'", "logger.jsonl.filename", "same path")


# --- 6. the way out ---------------------------------------------------------------------------------------------


def test_a_link_leading_out_names_the_way_out(tmp_path, victim):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "logs").symlink_to(victim.path, target_is_directory=True)
    with pytest.raises(UsageError) as err:
        inside(run_dir, "logs/m.jsonl", what="logger.jsonl.filename")
    message = str(err.value)
    assert f"leads to {victim.path / 'm.jsonl'}, outside the run directory" in message
    assert f"{run_dir / 'logs'} is a link" in message and "remove the link" in message and "\n" not in message

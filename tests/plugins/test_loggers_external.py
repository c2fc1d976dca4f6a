"""The tensorboard, mlflow and wandb loggers, read back with each library's own reader.

Each logger is built by its registered factory and fed a stand-in run (the attributes a
logger may use: directory, config_dict, history, start_epoch, epochs, components). What it
wrote is read back epoch by epoch: TensorBoard's EventAccumulator, MlflowClient, and the
records of wandb's ``.wandb`` file. A kill and a resume must leave every epoch exactly once.
Nothing may reach the network: connections and DNS lookups from this process fail the test.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from jaxyard.core.errors import UsageError
from jaxyard.core.train.loggers import LOGGER_METHODS, MissingExtra
from jaxyard.plugins import loggers as builtin
from jaxyard.plugins._trackers import common as trackers

from helpers import clean_environ, probe_imports, wait_for

CONFIG = {
    "run": {"optimizer": "adam", "model": "mlp", "loader": "synthetic", "epochs": 6, "batch_size": 32,
            "learning_rate": 0.001, "drop_last": False, "loggers": ["jsonl"], "monitor": "val_loss"},
    "optimizer": {"adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-08}},
    "model": {"mlp": {"hidden_dims": [256, 128], "activation": "relu"}},
    "loader": {"synthetic": {"train_size": 1000, "class_sep": 6.0}},
}
COMPONENTS = {"optimizer": "adam", "scheduler": "cosine", "model": "mlp", "loader": "synthetic", "checkpointer": "orbax"}
# tracker name -> record key
NAMES = {"train/loss": "train_loss", "train/acc": "train_acc", "val/loss": "val_loss", "val/acc": "val_acc",
         "lr": "lr", "time/train": "train_time", "time/val": "val_time"}


def record(epoch: int, shift: float = 0.0) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.1 / epoch, "train_loss": 2.0 / epoch + shift,
            "train_acc": 0.1 * epoch, "val_loss": 2.5 / epoch + shift, "val_acc": 0.09 * epoch,
            "train_time": 0.5 + 0.01 * epoch, "val_time": 0.05}


def fake_run(directory: Path, history=(), start_epoch: int = 0):
    warnings: list[str] = []
    return SimpleNamespace(directory=Path(directory), config_dict=CONFIG, history=list(history), start_epoch=start_epoch,
                           epochs=6, components=dict(COMPONENTS), warn=warnings.append, warnings=warnings)


def fake_result(directory: Path, history):
    return SimpleNamespace(run_dir=Path(directory), history=list(history), test={"test_loss": 0.42, "test_acc": 0.91},
                           stopped_early=False, timings={"total_s": 12.5, "train_s": 10.0, "compile_s": None},
                           stop_reason=None, best=None)


def factories() -> dict:
    found = {}
    builtin.jaxyard_register_loggers(lambda name, factory, params=None, description=None: found.__setitem__(name, (factory, params)))
    return found


def build(name: str, directory: Path, **params):
    if name == "mlflow" and not params.get("tracking_uri") and not (Path(directory) / "mlflow.db").exists():
        schema = mlflow_schema()
        if schema is not None:  # an empty store, as the logger's first start makes it
            shutil.copyfile(schema, Path(directory) / "mlflow.db")
    factory, params_cls = factories()[name]
    logger = factory(params_cls(**params), directory=Path(directory))
    assert all(callable(getattr(logger, m, None)) for m in LOGGER_METHODS)
    return logger


_SCHEMA: list[Path] = []


def mlflow_schema() -> Path | None:
    """An empty MLflow SQLite store (its schema and default experiment, nothing else), made once per
    test process and copied into each run directory: MLflow's migrations take about a second.
    None while a test hides mlflow or its database libraries (a missing extra)."""
    if not _SCHEMA:
        if any(sys.modules.get(name, True) is None for name in ("mlflow", "sqlalchemy", "alembic")):
            return None
        from mlflow import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="mlflow-schema-")) / "mlflow.db"
        log = logging.getLogger("mlflow")
        level = log.level
        log.setLevel(logging.WARNING)  # not its "Creating initial MLflow database tables" in a test's output
        try:
            MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        finally:
            log.setLevel(level)
        _SCHEMA.append(path)
    return _SCHEMA[0]


def child_env() -> dict[str, str]:
    """The environment for a child process, without this process's wandb service (WANDB_SERVICE,
    set by wandb.init: a child would share it, and its kill would leave the run open there)."""
    return {k: v for k, v in clean_environ().items() if k != "WANDB_SERVICE"}


def expected(records) -> dict[str, dict[int, float]]:
    return {name: {r["epoch"]: r[key] for r in records} for name, key in NAMES.items()}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Connections other than local sockets, and DNS lookups, fail the test."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"a logger tried to connect to {address!r}")
        return real_connect(self, address)

    def getaddrinfo(*args, **kwargs):
        raise AssertionError(f"a logger tried to look up {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A working directory of its own: nothing may be written there (./mlruns, ./wandb)."""
    path = tmp_path / "cwd"
    path.mkdir()
    monkeypatch.chdir(path)
    yield path
    assert list(path.iterdir()) == []


# --- registration, missing extras, imports ------------------------------------------------------


def test_registered_with_documented_params():
    found = factories()
    assert {"jsonl", "csv", "tensorboard", "mlflow", "wandb"} <= set(found)
    import attrs

    for name in ("tensorboard", "mlflow", "wandb"):
        factory, params = found[name]
        assert factory.__doc__.strip().splitlines()[0], name
        for field in attrs.fields(params):
            assert field.default is not attrs.NOTHING and field.metadata.get("doc") and field.type, (name, field.name)
    assert found["wandb"][1]().mode == "offline"
    with pytest.raises(ValueError):
        found["wandb"][1](mode="sometimes")


@pytest.mark.parametrize(
    "name, module, extra",
    [("tensorboard", "tensorboardX", "tensorboard"), ("mlflow", "mlflow", "mlflow"), ("mlflow", "sqlalchemy", "mlflow"),
     ("wandb", "wandb", "wandb")],
)
def test_missing_library_is_one_line_naming_the_extra(name, module, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(MissingExtra) as info:
        build(name, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, UsageError) and "\n" not in message
    assert message == f"the {name} logger needs {module}, which is not installed: pip install 'jaxyard[{extra}]'"


def test_listing_imports_no_tracker_and_mlflow_telemetry_stays_off(tmp_path):
    """In a fresh process (no pytest or CI variables, which MLflow takes as 'do not track'):
    registering the loggers imports no tracker library; building the mlflow logger leaves
    MLflow's telemetry client unset."""
    register = textwrap.dedent(
        """
        from jaxyard.plugins import loggers
        found = {}
        loggers.jaxyard_register_loggers(lambda name, f, params=None, description=None: found.__setitem__(name, (f, params)))
        """
    )
    telemetry = textwrap.dedent(
        f"""
        import importlib.util, os
        if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy") is None:
            result = None
        else:
            f, p = found["mlflow"]
            f(p(), directory={str(tmp_path)!r})
            from mlflow.telemetry import get_telemetry_client
            result = [get_telemetry_client() is None, os.environ.get("MLFLOW_DISABLE_TELEMETRY")]
        """
    )
    heavy = ("tensorboardX", "tensorboard", "mlflow", "wandb", "sqlalchemy", "alembic", "jaxyard.plugins._trackers.tensorboard",
             "jaxyard.plugins._trackers.mlflow", "jaxyard.plugins._trackers.wandb")
    ci = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "BUILDKITE", "CIRCLECI",
          "TF_BUILD", "TEAMCITY_VERSION", "CODEBUILD_BUILD_ARN", "BITBUCKET_BUILD_NUMBER", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in child_env().items() if k not in ci}
    registered, built = probe_imports([register, telemetry], heavy=heavy, cwd=tmp_path, env=env)
    assert registered["heavy"] == []
    assert built["result"] in (None, [True, None])  # no telemetry client; the variable was set for the import only


# --- tensorboard ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tb_reader():
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(logdir: Path):
        acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]}
        texts = {tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)] for tag in tags["tensors"]}
        return scalars, texts

    return read


def assert_scalars(scalars: dict, records) -> None:
    for name, values in expected(records).items():
        steps = [step for step, _ in scalars[name]]
        assert steps == sorted(values), (name, steps)  # every epoch once, in order
        for step, value in scalars[name]:
            assert value == pytest.approx(values[step], rel=1e-6), (name, step)  # stored as float32


def test_tensorboard_scalars_config_and_test_metrics(tb_reader, tmp_path, cwd, capfd):
    logger = build("tensorboard", tmp_path)
    run = fake_run(tmp_path)
    records = [record(e) for e in range(1, 5)]
    logger.start(run)
    for r in records:
        logger.log_epoch(r)
    logger.finish(run, "finished", fake_result(tmp_path, records))
    assert capfd.readouterr() == ("", "")
    assert [p.name for p in tmp_path.iterdir() if p.name != "cwd"] == ["tensorboard"]
    scalars, texts = tb_reader(tmp_path / "tensorboard")
    assert_scalars(scalars, records)
    assert scalars["test/loss"] == [(4, pytest.approx(0.42))] and scalars["test/acc"] == [(4, pytest.approx(0.91))]
    assert scalars["time/total_s"] == [(4, 12.5)] and "time/compile_s" not in scalars
    [(step, text)] = texts["config/text_summary"]
    assert step == 0 and "[optimizer.adam]" in text and "b1 = 0.9" in text and "hidden_dims = [256, 128]" in text


def test_tensorboard_kill_and_resume_leaves_each_epoch_once(tb_reader, tmp_path):
    logdir = tmp_path / "tensorboard"
    first = [record(e) for e in range(1, 6)]
    crashed = build("tensorboard", tmp_path)
    crashed.start(fake_run(tmp_path))
    for r in first:
        crashed.log_epoch(r)
    del crashed  # killed: no finish (every epoch was flushed as it ended)

    second = [record(e, shift=0.25) for e in range(4, 7)]  # different numbers, to see which copy is read
    run = fake_run(tmp_path, history=first[:3], start_epoch=3)
    resumed = build("tensorboard", tmp_path)
    resumed.start(run)
    for r in second:
        resumed.log_epoch(r)
    resumed.finish(run, "finished", fake_result(tmp_path, first[:3] + second))

    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # started within one second, and both kept
    scalars, texts = tb_reader(logdir)
    assert_scalars(scalars, first[:3] + second)
    assert [step for step, _ in texts["config/text_summary"]] == [0]


def test_tensorboard_restart_from_scratch_hides_the_first_attempt(tb_reader, tmp_path):
    crashed = build("tensorboard", tmp_path)
    crashed.start(fake_run(tmp_path))
    for epoch in (1, 2):
        crashed.log_epoch(record(epoch))
    del crashed  # killed before its first checkpoint: the run starts over
    run = fake_run(tmp_path)
    again = build("tensorboard", tmp_path)
    again.start(run)
    records = [record(e, shift=0.5) for e in (1, 2, 3)]
    for r in records:
        again.log_epoch(r)
    again.finish(run, "finished", fake_result(tmp_path, records))
    scalars, texts = tb_reader(tmp_path / "tensorboard")
    assert_scalars(scalars, records)
    assert [step for step, _ in texts["config/text_summary"]] == [0]


def test_tensorboard_added_when_resuming_writes_the_restored_epochs(tb_reader, tmp_path):
    history = [record(e) for e in range(1, 4)]
    run = fake_run(tmp_path, history=history, start_epoch=3)
    logger = build("tensorboard", tmp_path, subdir="tb")
    logger.start(run)
    logger.log_epoch(record(4))
    logger.finish(run, "failed")
    scalars, texts = tb_reader(tmp_path / "tb")
    assert_scalars(scalars, history + [record(4)])
    assert "test/loss" not in scalars and "config/text_summary" in texts


def test_tensorboard_sigkill_keeps_finished_epochs(tb_reader, tmp_path):
    """A real SIGKILL right after an epoch: its scalars are on disk (tensorboardX's SummaryWriter
    would still hold some in its queue)."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parent.parent)!r}]  # this file, and helpers
        from test_loggers_external import build, fake_run, record
        logger = build("tensorboard", {str(tmp_path)!r})
        logger.start(fake_run({str(tmp_path)!r}))
        for epoch in range(1, 4):
            logger.log_epoch(record(epoch))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    scalars, _ = tb_reader(tmp_path / "tensorboard")
    assert_scalars(scalars, [record(e) for e in range(1, 4)])


# --- mlflow -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_client():
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow import MlflowClient

    def client(directory: Path):
        return MlflowClient(tracking_uri=f"sqlite:///{Path(directory).resolve()}/mlflow.db")

    return client


def mlflow_history(client, run_id: str) -> dict[str, dict[int, list[float]]]:
    """metric -> step -> every value logged at that step."""
    out: dict[str, dict[int, list[float]]] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            out.setdefault(key, {}).setdefault(m.step, []).append(m.value)
    return out


def assert_mlflow_epochs(history: dict, records) -> None:
    for name, values in expected(records).items():
        assert history[name] == {epoch: [value] for epoch, value in values.items()}, name  # once each


def test_mlflow_params_metrics_artifacts_and_status(mlflow_client, tmp_path, cwd, capfd):
    (tmp_path / "config.toml").write_text('[run]\nepochs = 6\n')
    (tmp_path / "summary.json").write_text("{}\n")
    (tmp_path / "training_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    logger = build("mlflow", tmp_path)
    run = fake_run(tmp_path)
    records = [record(e) for e in range(1, 5)]
    logger.start(run)
    for r in records:
        logger.log_epoch(r)
    logger.finish(run, "finished", fake_result(tmp_path, records))
    assert capfd.readouterr() == ("", "")  # no banner, no INFO lines from the database set-up

    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("jaxyard")
    [found] = client.search_runs([experiment.experiment_id])
    saved = json.loads((tmp_path / "mlflow_run.json").read_text())
    assert found.info.run_id == saved["run_id"] and found.info.status == "FINISHED"
    assert found.info.run_name == tmp_path.name
    params = found.data.params
    assert params["optimizer.adam.b1"] == "0.9" and params["run.epochs"] == "6" and params["run.optimizer"] == "adam"
    assert params["model.mlp.hidden_dims"] == "[256, 128]" and params["run.drop_last"] == "false"
    assert found.data.tags["jaxyard.optimizer"] == "adam" and found.data.tags["jaxyard.model"] == "mlp"
    history = mlflow_history(client, found.info.run_id)
    assert_mlflow_epochs(history, records)
    assert history["test/loss"] == {4: [0.42]} and history["test/acc"] == {4: [0.91]} and history["time/total_s"] == {4: [12.5]}
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert artifacts == {"config.toml", "summary.json", "training_curves.png"}
    assert Path(experiment.artifact_location.removeprefix("file://")).parent == tmp_path.resolve()  # not ./mlruns
    assert run.warnings == []


def test_mlflow_kill_and_resume_continues_the_run_with_each_epoch_once(mlflow_client, tmp_path):
    first = [record(e) for e in range(1, 6)]
    crashed = build("mlflow", tmp_path)
    crashed.start(fake_run(tmp_path))
    for r in first:
        crashed.log_epoch(r)
    for operation in crashed.pending:  # a killed process's queue is gone: what reached the store is what counts
        operation.wait()
    del crashed  # killed after epoch 5; the checkpoint it resumes from holds epochs 1-3

    # The resumed run computes epochs 4 and 5 again, bit for bit, then goes on.
    second = [record(e) for e in range(4, 7)]
    run = fake_run(tmp_path, history=first[:3], start_epoch=3)
    resumed = build("mlflow", tmp_path)
    resumed.start(run)
    for r in second:
        resumed.log_epoch(r)
    resumed.finish(run, "finished", fake_result(tmp_path, first[:3] + second))

    client = mlflow_client(tmp_path)
    [found] = client.search_runs([client.get_experiment_by_name("jaxyard").experiment_id])
    assert found.info.run_id == json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"]
    assert found.info.status == "FINISHED"
    history = mlflow_history(client, found.info.run_id)
    assert_mlflow_epochs(history, first[:3] + second)
    assert history["test/loss"] == {6: [0.42]}
    assert run.warnings == []


def test_mlflow_added_when_resuming_logs_restored_epochs_and_a_failure(mlflow_client, tmp_path):
    history = [record(e) for e in range(1, 151)]  # 1050 metrics: more than one log_batch may take
    run = fake_run(tmp_path, history=history, start_epoch=150)
    logger = build("mlflow", tmp_path, experiment="other", run_name="resumed-run")
    logger.start(run)
    logger.log_epoch(record(151))
    logger.finish(run, "failed")
    client = mlflow_client(tmp_path)
    [found] = client.search_runs([client.get_experiment_by_name("other").experiment_id])
    assert found.info.status == "FAILED" and found.info.run_name == "resumed-run"
    assert_mlflow_epochs(mlflow_history(client, found.info.run_id), history + [record(151)])


# --- wandb ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wandb_lib():
    wandb = pytest.importorskip("wandb")
    yield wandb
    wandb.teardown()  # stop this process's wandb service


def wandb_records(path: Path, *, complete: bool = True):
    """Every record of a .wandb file: a LevelDB log (32 KiB blocks; each chunk: CRC-32 of type+data,
    length, type) after a 7-byte ':W&B' header, holding wandb_internal_pb2.Record messages. Every
    checksum must hold; with ``complete=False`` a file still being written ends at its torn tail."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack_from("<HB", data, 4) == (0xBEE1, 0)
    pos, parts, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if (crc, length, kind) == (0, 0, 0):
            break
        chunk = data[pos + 7 : pos + 7 + length]
        if not complete and (len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc):
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, (path, pos)
        pos += 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            message = pb.Record()
            message.ParseFromString(parts)
            out.append(message)
    return out


def wandb_rows(path: Path, *, complete: bool = True) -> dict[int, dict]:
    """step -> the history row logged at it (each step once)."""
    rows = {}
    for rec in wandb_records(path, complete=complete):
        if rec.WhichOneof("record_type") == "history":
            row = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in rec.history.item}
            assert rec.history.step.num not in rows, rec.history.step.num
            rows[rec.history.step.num] = row
    return rows


def wandb_rows_so_far(path: Path) -> dict[int, dict]:
    """The rows of a .wandb file wandb's service is still writing (up to its torn tail)."""
    return wandb_rows(path, complete=False)


def wandb_files(directory: Path) -> list[Path]:
    return sorted((directory / "wandb").glob("offline-run-*/run-*.wandb"))


def wait_for_exit_record(path: Path) -> None:
    """run.finish() returns before wandb's service has written the file's tail: wait for it."""
    wait_for(lambda: any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path, complete=False)), what=f"{path} has an exit record")


def assert_wandb_rows(rows: dict[int, dict], records) -> None:
    assert sorted(rows) == [r["epoch"] for r in records]
    for name, values in expected(records).items():
        for epoch, value in values.items():
            assert rows[epoch][name] == value, (name, epoch)  # JSON round-trips a double exactly


def test_wandb_offline_run_file_holds_config_epochs_and_summary(wandb_lib, tmp_path, cwd, capfd, monkeypatch):
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    logger = build("wandb", tmp_path)
    run = fake_run(tmp_path)
    records = [record(e) for e in range(1, 5)]
    logger.start(run)
    assert "WANDB_ERROR_REPORTING" not in os.environ  # set while wandb started only
    for r in records:
        logger.log_epoch(r)
    logger.finish(run, "finished", fake_result(tmp_path, records))
    assert capfd.readouterr() == ("", "")

    run_id = json.loads((tmp_path / "wandb_run.json").read_text())["id"]
    [path] = wandb_files(tmp_path)
    wait_for_exit_record(path)
    assert path.name == f"run-{run_id}.wandb" and path.parent.name.endswith(f"-{run_id}")
    assert_wandb_rows(wandb_rows(path), records)
    recs = wandb_records(path)
    [header_run] = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert header_run.run_id == run_id and header_run.project == "jaxyard" and header_run.display_name == tmp_path.name
    config = {item.key: json.loads(item.value_json) for r in recs if r.WhichOneof("record_type") == "config" for item in r.config.update}
    config.update({item.key: json.loads(item.value_json) for item in header_run.config.update})
    assert {k: v for k, v in config.items() if not k.startswith("_")} == CONFIG
    summary = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update})
    assert summary["test/loss"] == 0.42 and summary["test/acc"] == 0.91 and summary["time/total_s"] == 12.5
    [exit_record] = [r.exit for r in recs if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


@pytest.mark.parametrize("flushed", [True, False], ids=["killed-after-flush", "killed-before-flush"])
def test_wandb_sigkill_and_resume_leaves_each_epoch_once(wandb_lib, tmp_path, flushed):
    """Killed (SIGKILL) after epoch 5, the run resumes from epoch 3. Killed once wandb's service
    has written epochs 1-5 to the file (it writes every FLUSH_SECONDS; the child waits for them
    to be there), the resumed run logs only 6; killed before any flush (the child's service told
    to flush only after an hour), the file holds nothing and the resumed run logs 1-3 from the
    restored history, then 4-6. Each epoch is in one of the run's files, once."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pathlib import Path
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parent.parent)!r}]  # this file, and helpers
        from test_loggers_external import build, fake_run, record, wandb_files, wandb_rows_so_far
        from jaxyard.plugins._trackers import wandb as tracker
        if not {flushed!r}:
            tracker.QUIET["x_transaction_log_flush_interval"] = 3600.0
        logger = build("wandb", {str(tmp_path)!r})
        logger.start(fake_run({str(tmp_path)!r}))
        for epoch in range(1, 6):
            logger.log_epoch(record(epoch))
        def written():
            files = wandb_files(Path({str(tmp_path)!r}))
            return sorted(wandb_rows_so_far(files[0])) if files else []
        while {flushed!r} and written() != [1, 2, 3, 4, 5]:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [killed] = wandb_files(tmp_path)
    assert sorted(wandb_rows(killed)) == ([1, 2, 3, 4, 5] if flushed else [])

    history = [record(e) for e in range(1, 4)]
    run = fake_run(tmp_path, history=history, start_epoch=3)
    resumed = build("wandb", tmp_path)
    resumed.start(run)
    for epoch in range(4, 7):
        resumed.log_epoch(record(epoch))
    resumed.finish(run, "failed")

    files = wandb_files(tmp_path)
    assert len(files) == 2 and len({f.name for f in files}) == 1  # one run id, two sessions
    wait_for_exit_record(files[1])
    rows = [wandb_rows(f) for f in files]
    assert sorted(rows[1]) == ([6] if flushed else [1, 2, 3, 4, 5, 6])
    merged = {**rows[0], **rows[1]}
    assert sum(map(len, rows)) == len(merged) == 6
    assert_wandb_rows(merged, [record(e) for e in range(1, 7)])
    [exit_record] = [r.exit for r in wandb_records(files[1]) if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 1


def test_wandb_disabled_writes_nothing(wandb_lib, tmp_path):
    logger = build("wandb", tmp_path, mode="disabled")
    run = fake_run(tmp_path)
    logger.start(run)
    logger.log_epoch(record(1))
    logger.finish(run, "finished", fake_result(tmp_path, [record(1)]))
    assert list(tmp_path.iterdir()) == []


def test_metric_names_match_across_trackers():
    assert trackers.scalars(record(2)) == {name: record(2)[key] for name, key in NAMES.items()}
    assert trackers.scalars({"epoch": 1, "val_loss": None, "flag": True, "note": "x", "val_acc": math.inf}) == {"val/acc": math.inf}
    result = fake_result(Path("."), [])
    assert trackers.final_scalars(result) == {"test/loss": 0.42, "test/acc": 0.91, "time/total_s": 12.5, "time/train_s": 10.0}
    assert trackers.final_scalars(None) == {}


def test_any_tasks_metrics_are_logged_as_recorded(tmp_path):
    """No logger assumes loss and accuracy: a next_token run's records go through as they are."""
    tokens = {"epoch": 1, "step": 10, "lr": 0.1, "train_loss": 2.0, "train_perplexity": 7.4, "train_token_acc": 0.3,
              "val_loss": 2.1, "val_perplexity": 8.2, "val_token_acc": 0.28, "val_perplexity_ema": 8.0, "train_time": 0.5, "val_time": 0.05}
    assert trackers.scalars(tokens) == {"lr": 0.1, "train/loss": 2.0, "train/perplexity": 7.4, "train/token_acc": 0.3, "val/loss": 2.1,
                                        "val/perplexity": 8.2, "val/token_acc": 0.28, "val/perplexity_ema": 8.0, "time/train": 0.5,
                                        "time/val": 0.05}
    logger = builtin.csv_logger(builtin.CsvParams(), directory=tmp_path)
    logger.start(fake_run(tmp_path))
    logger.log_epoch(tokens)
    header, row = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header.split(",") == list(tokens) and row.split(",")[4] == "7.4"

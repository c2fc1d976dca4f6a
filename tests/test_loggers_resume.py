"""`run --logger tensorboard --logger mlflow --logger csv` through the real CLI, killed with
SIGKILL after five epochs and resumed: each logger holds every epoch exactly once, equal to
metrics.jsonl."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, clean_environ

pytest.importorskip("tensorboardX")
pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

ARGS = ["--logger", "tensorboard", "--logger", "mlflow", "--logger", "csv", "--epochs", "8", "--batch-size", "16",
        "--set", "run.save_every=2", "--set", "loader.train_size=400", "--set", "model.hidden_dims=64"]
KEYS = {"train/loss": "train_loss", "train/acc": "train_acc", "val/loss": "val_loss", "val/acc": "val_acc", "lr": "lr"}


def cli(*args):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *map(str, args)], env=clean_environ(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_three_loggers_after_kill_and_resume_hold_each_epoch_once(tmp_path):
    out = tmp_path / "run"
    proc = cli("run", "--out", out, *ARGS)
    deadline = time.monotonic() + 180
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    resumed = cli("resume", out)
    output = resumed.communicate(timeout=180)[0]
    assert resumed.returncode == 0, output

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 9))

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [{k: float(v) for k, v in r.items()} for r in rows] == [{k: float(r[k]) for k in rows[0]} for r in records]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag, key in KEYS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(1, 9)), tag
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6), tag

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    for tag, key in KEYS.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag))
        assert [s for s, _ in history] == list(range(1, 9)), tag
        assert [v for _, v in history] == pytest.approx([r[key] for r in records], rel=1e-9), tag
    assert client.get_run(run_id).info.status == "FINISHED"

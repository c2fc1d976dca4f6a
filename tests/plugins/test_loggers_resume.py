"""`run --logger tensorboard --logger mlflow --logger csv` through the real CLI, killed with
SIGKILL after five epochs and resumed: each logger holds every epoch exactly once, equal to
metrics.jsonl."""

import csv
import json
import signal
import subprocess
import sys

import pytest

from helpers import PAUSE, REPO, as_options, clean_environ, tiny, wait_for

pytest.importorskip("tensorboardX")
pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

ARGS = ["--logger", "tensorboard", "--logger", "mlflow", "--logger", "csv", "--epochs", "8", "--batch-size", "16",
        *as_options(tiny("run.save_every=2"))]
KEYS = {"train/loss": "train_loss", "train/acc": "train_acc", "val/loss": "val_loss", "val/acc": "val_acc", "lr": "lr"}


def cli(*args, env=None):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *map(str, args)], env=env or clean_environ(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_three_loggers_after_kill_and_resume_hold_each_epoch_once(tmp_path, run_cli):
    """Killed while held after epoch 5 (tests/plugins_local/pause.py): its loggers have logged it,
    its last checkpoint is epoch 4's."""
    out, pauses = tmp_path / "run", tmp_path / "pauses"
    pauses.mkdir()
    proc = cli("--strict-plugins", "--plugin", PAUSE, "run", "--out", out, *ARGS,
               env=clean_environ(PAUSE_DIR=str(pauses), PAUSE_AT="epoch-5"))
    try:
        wait_for((pauses / "paused-epoch-5").exists, proc, what="epoch 5 ended")
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    metrics = out / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 5
    resumed = run_cli(["resume", out])  # in this process: only the killed run needs a real one
    assert resumed.exit_code == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:], resumed.exception)

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

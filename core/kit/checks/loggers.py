"""Logger checks: start, log_epoch and finish over a stand-in run, resumed once, writing only under
the run directory. The stand-in run's task reports loss, mae and r2 (no accuracy): a logger must
write whatever metrics a record holds (``run.metrics`` gives their directions), never spell them."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from jaxyard.core.kit.harness import Failure, Subject, define_check

#: the stand-in run's task and its metrics (not classification's: a logger spelling val_acc is caught)
TASK, METRICS = "regression", {"loss": "min", "mae": "min", "r2": "max"}
TEST = {"test_loss": 0.5, "test_mae": 0.4, "test_r2": 0.8}


def _record(epoch: int) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.01 / epoch, "train_loss": 2.0 / epoch, "train_mae": 1.0 / epoch,
            "train_r2": 0.2 * epoch, "val_loss": 2.2 / epoch, "val_mae": 1.1 / epoch, "val_r2": 0.18 * epoch,
            "train_time": 0.5, "val_time": 0.05}


class _StandInConfig:
    """What a logger may read of ``run.config``: ``run`` (the real RunSettings) and ``to_dict()``."""

    def __init__(self, logger: str):
        from jaxyard.core.registry.run_settings import RunSettings

        self.run = RunSettings(task=TASK, epochs=3, loggers=(logger,))

    def to_dict(self) -> dict:
        from jaxyard.core.registry.params import to_plain

        return {"run": to_plain(self.run), "task": {TASK: {"loss": "squared_error"}}, "optimizer": {"adam": {"b1": 0.9}},
                "model": {"mlp": {"hidden_dims": [8]}}}


def _stand_in_run(s: Subject, directory: Path, history: list, start_epoch: int):
    from jaxyard.core.train.events import Run

    return Run(
        config=_StandInConfig(s.entry.name), directory=directory,
        components={"task": TASK, "optimizer": "adam", "scheduler": "cosine", "model": "mlp", "loader": "synthetic", "checkpointer": "none"},
        sizes={"train": 30, "val": 10, "test": 10}, num_params=42, steps_per_epoch=10, total_steps=30, warmup_steps=0,
        history=list(history), start_epoch=start_epoch, metrics=dict(METRICS), task_name=TASK,
    )


def _run_files(directory: Path, config_dict: dict, history: list) -> None:
    """What the run directory holds when a logger's finish() is called: config.toml, summary.json, the curves."""
    from jaxyard.core.registry.settings import dump_toml

    (directory / "config.toml").write_text(dump_toml(config_dict))
    summary = {"task": TASK, "metrics": METRICS, "test": TEST, "history": history}
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "training_curves.png").write_bytes(_PNG)


# a 1x1 PNG
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2213bc50000000049454e44ae426082"
)


@define_check("logger")
def check_logger_protocol(s: Subject) -> str:
    """factory(params, directory) returns an object with start, log_epoch and finish (a missing extra skips, naming it)."""
    from jaxyard.core.train.loggers import LOGGER_METHODS

    logger = s.create(directory=s.tmp_path / "run")
    missing = [m for m in LOGGER_METHODS if not callable(getattr(logger, m, None))]
    if missing:
        raise Failure(f"the object it returns ({type(logger).__name__}) lacks {', '.join(missing)}",
                      "implement start(run), log_epoch(record) and finish(run, status, result=None) (jaxyard.Logger)")
    return type(logger).__name__


@define_check("logger", "full")
def check_logger_lifecycle(s: Subject) -> str:
    """A stand-in run (a task reporting loss, mae and r2) is started, fed 3 epochs and finished; then resumed (history of
    2 epochs), fed epoch 3 and finished, with nothing raised and nothing written outside the run directory."""
    from jaxyard.core.train.events import RunResult

    directory = s.tmp_path / "run"
    directory.mkdir(parents=True, exist_ok=True)
    cwd = s.tmp_path / "cwd"
    cwd.mkdir()
    records = [_record(e) for e in (1, 2, 3)]
    with _chdir(cwd):
        first = s.create(directory=directory)
        run = _stand_in_run(s, directory, [], 0)
        first.start(run)
        for r in records:
            run.history.append(r)
            first.log_epoch(dict(r))
        _run_files(directory, run.config_dict, records)
        first.finish(run, "finished", RunResult(directory, list(records), dict(TEST), False,
                                                {"total_s": 1.0, "compile_s": None}))
        again = s.create(directory=directory)  # another process: `jaxyard resume` from the checkpoint of epoch 2
        run = _stand_in_run(s, directory, records[:2], 2)
        again.start(run)
        run.history.append(records[2])
        again.log_epoch(dict(records[2]))
        again.finish(run, "finished", RunResult(directory, list(records), dict(TEST), False,
                                                {"total_s": 1.0, "compile_s": None}))
    stray = sorted(p.name for p in cwd.iterdir())
    if stray:
        raise Failure(f"it wrote {', '.join(stray)} in the working directory", "write only under the run directory it is given")
    written = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return f"wrote {len(written)} files under the run directory"


@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)

"""A run's directory: its resolved config, metrics.jsonl, curves and checkpoints.

metrics.jsonl gets one whole line per epoch, written by a single ``write`` to a file opened for
appending, so a killed process never leaves a torn line. On resume it is rewritten (atomically) from the history stored in
the checkpoint, so it never holds epochs the resumed run will write again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from jaxyard.core.errors import UsageError

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CURVES = "training_curves.png"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"


def default_run_dir(base: str, optimizer: str, model: str, loader: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{stamp}-{model}-{optimizer}-{loader}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{model}-{optimizer}-{loader}-{n}"
    return path


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def check_new(self) -> None:
        """Refuse a directory that already holds something: a run is never overwritten."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise UsageError(f"run directory {self.path} is not empty; choose another --out, or `jaxyard resume {self.path}`")

    def create(self, config_toml: str) -> None:
        self.check_new()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(self / CONFIG, config_toml)
        except OSError as err:
            raise UsageError(f"cannot write the run directory {self.path}: {err.strerror}") from None

    def append_metrics(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        fd = os.open(self / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def rewrite_metrics(self, history: list[dict]) -> None:
        write_atomic(self / METRICS, "".join(json.dumps(r) + "\n" for r in history))

    def read_metrics(self) -> list[dict]:
        path = self / METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

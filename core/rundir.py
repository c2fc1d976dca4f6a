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


class RunDir:
    """A run's directory. ``RunDir.new`` claims a fresh one; ``RunDir(path)`` opens an existing one."""

    def __init__(self, path: str | os.PathLike, *, created: bool = False):
        self.path = Path(path)
        self.created = created

    @classmethod
    def new(cls, out: str | os.PathLike | None, *, base: str, name: str) -> RunDir:
        """Claim ``out`` (new or empty), or else ``base/<timestamp>-<name>`` made exclusively.

        Two runs started in the same second never share a directory: the default name gets a
        ``-2``, ``-3``... suffix when ``mkdir`` finds it taken.
        """
        try:
            if out is not None:
                path = Path(out)
                existed = path.is_dir()
                if path.exists() and (not existed or any(path.iterdir())):
                    raise UsageError(f"run directory {path} is not empty; choose another --out, or `jaxyard resume {path}`")
                path.mkdir(parents=True, exist_ok=True)
                return cls(path, created=not existed)
            stem = Path(base) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
            Path(base).mkdir(parents=True, exist_ok=True)
            for n in range(1, 1000):
                path = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
                try:
                    path.mkdir()
                    return cls(path, created=True)
                except FileExistsError:
                    continue
            raise UsageError(f"could not find a free run directory name under {base}")
        except OSError as err:
            raise UsageError(f"cannot create the run directory {err.filename or out or base}: {err.strerror}") from None

    def discard(self) -> None:
        """Remove the directory if this run created it and wrote nothing into it."""
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config_toml: str) -> None:
        write_atomic(self / CONFIG, config_toml)

    def append_metrics(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        fd = os.open(self / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def rewrite_metrics(self, history: list[dict]) -> None:
        write_atomic(self / METRICS, "".join(json.dumps(r) + "\n" for r in history))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

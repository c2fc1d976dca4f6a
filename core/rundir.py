"""A run's directory: its resolved config, summary, curves, checkpoints and what loggers write.

config.toml is written (atomically) once every component has been built: a directory holding
it is a run. metrics.jsonl belongs to the ``jsonl`` logger.
"""

from __future__ import annotations

import os
import shutil
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
        """Remove what this run wrote, before its config.toml was committed: a directory this run
        created goes whole; a given empty one is emptied again (it held nothing of anyone's)."""
        if not self.path.is_dir() or (self / CONFIG).exists():
            return
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for child in self.path.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config_toml: str) -> None:
        write_atomic(self / CONFIG, config_toml)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

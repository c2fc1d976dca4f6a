"""fsync for a finished checkpoint step: orbax does not fsync the JSON items it writes."""

from __future__ import annotations

import os
import pathlib

__all__ = ["fsync_dir", "fsync_files", "fsync_tree"]


def fsync_dir(path: os.PathLike | str) -> None:
    """fsync a directory: makes the entries created or renamed in it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(directory: os.PathLike | str) -> None:
    """fsync the files directly in ``directory`` (not below it), then ``directory`` itself."""
    with os.scandir(directory) as entries:
        files = [e.path for e in entries if e.is_file(follow_symlinks=False)]
    for path in files:
        _fsync_file(path)
    fsync_dir(directory)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: os.PathLike | str) -> None:
    """fsync every file and directory under ``root``, ``root`` included."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            _fsync_file(os.path.join(dirpath, name))
        fsync_dir(pathlib.Path(dirpath))

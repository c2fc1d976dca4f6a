"""A run's directory: its resolved config, provenance, summary, curves, checkpoints and what loggers write.

config.toml is written (atomically) once every component has been built: a directory holding
it is a run. components.json, written with it, says where each component came from (plugin,
distribution, local file), so that ``resume`` and ``eval`` can name what to load when one is
missing. metrics.jsonl belongs to the ``jsonl`` logger.

One writer at a time: ``run`` and ``resume`` hold an exclusive OS lock on ``.jaxyard.lock``
(``flock``: the kernel releases it when the process dies, so a ``kill -9`` never leaves a
stale lock) from before they write anything until they finish. A second writer is refused
with the holder's pid and host and writes nothing. Readers (``eval``) take no lock. The lock
file records its current (or last) holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from jaxyard.core.errors import UsageError

if TYPE_CHECKING:
    from jaxyard.core.registry.config import RunConfig

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CURVES = "training_curves.png"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"
COMPONENTS = "components.json"  # where each component came from: eval and resume say what to load
LOCK = ".jaxyard.lock"


def leftover(name: str) -> bool:
    """What a run that never committed its config may leave: the lock, a temporary config.toml
    (``config.toml.<random>.tmp``, or ``config.toml.tmp`` as earlier versions named it)."""
    return name == LOCK or (name.startswith(CONFIG + ".") and name.endswith(".tmp"))


class RunDirBusy(UsageError):
    """Another process is writing this run directory."""


class RunDir:
    """A run's directory. ``RunDir.new`` claims a fresh one; ``RunDir(path)`` opens an existing one."""

    def __init__(self, path: str | os.PathLike, *, created: bool = False):
        self.path = Path(path)
        self.created = created
        self._lock_fd: int | None = None

    @classmethod
    def new(cls, out: str | os.PathLike | None, *, base: str, name: str) -> RunDir:
        """Claim ``out`` (new, empty, or left by a run that never committed its config), or else
        ``base/<timestamp>-<name>`` made exclusively; either way locked for this process.

        Two runs started in the same second never share a directory: the default name gets a
        ``-2``, ``-3``... suffix when ``mkdir`` finds it taken.
        """
        try:
            if out is not None:
                path = Path(out)
                if path.exists() and not path.is_dir():
                    raise UsageError(f"run directory {path} exists and is not a directory; choose another --out")
                _refuse_a_run(path)
                try:  # whether this process made it decides what discard() may remove: mkdir says, atomically
                    path.mkdir(parents=True)
                    created = True
                except FileExistsError:
                    if not path.is_dir():
                        raise UsageError(f"run directory {path} exists and is not a directory; choose another --out") from None
                    created = False
                claimed = cls(path, created=created)
                claimed.lock()
                try:
                    _refuse_a_run(path, probe=False)  # written between the check and the lock: ours now, not busy
                    for child in path.iterdir():
                        if child.name != LOCK and leftover(child.name):
                            child.unlink(missing_ok=True)
                except BaseException:
                    claimed.unlock()
                    raise
                return claimed
            stem = Path(base) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
            Path(base).mkdir(parents=True, exist_ok=True)
            for n in range(1, 1000):
                path = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
                try:
                    path.mkdir()
                except FileExistsError:
                    continue
                claimed = cls(path, created=True)
                claimed.lock()
                return claimed
            raise UsageError(f"could not find a free run directory name under {base}")
        except OSError as err:
            raise UsageError(f"cannot create the run directory {err.filename or out or base}: {err.strerror}") from None

    def lock(self) -> None:
        """Take this directory's writer lock, or raise RunDirBusy naming the holder."""
        try:
            fd = os.open(self / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)  # never through a link
        except OSError as err:
            _refuse_link(self / LOCK, err)
            raise UsageError(f"cannot lock the run directory {self.path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirBusy(
                f"run directory {self.path} is being written by {holder}; wait for it to finish "
                f"(or stop it), then `jaxyard resume {self.path}`; or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def discard(self) -> None:
        """Remove what this run wrote, before its config.toml was committed: a directory this run
        created goes whole; a given empty one is emptied again (it held nothing of anyone's)."""
        try:
            if not self.path.is_dir() or (self / CONFIG).exists():
                return
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for child in self.path.iterdir():
                    if child.name != LOCK:
                        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        finally:
            self.unlock()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config_toml: str) -> None:
        write_atomic(self / CONFIG, config_toml)

    def write_components(self, config: RunConfig) -> None:
        """components.json: where each component of ``config`` comes from (:func:`component_sources`)."""
        write_json(self / COMPONENTS, component_sources(config))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json: the finished run's test metrics, best epoch, timings and versions."""
        write_json(self / SUMMARY, summary)


def component_sources(config: RunConfig) -> dict[str, Any]:
    """Where each component of a run comes from (components.json): by kind, and the loggers."""

    def source(choice) -> dict[str, Any]:
        e = choice.entry
        module = str(Path(e.module).resolve()) if e.source == "local" and e.module.endswith(".py") else e.module
        return {"name": e.name, "qualified": e.qualified, "plugin": e.plugin, "source": e.source, "module": module,
                "distribution": e.distribution, "version": e.version}

    out: dict[str, Any] = {kind: source(choice) for kind, choice in config.choices.items()}
    out["loggers"] = [source(choice) for choice in config.loggers]
    return out


def check_components(run_dir: str | os.PathLike, registry) -> None:
    """Refuse to reload a run one of whose components (as its components.json records them) is
    not loaded now, saying exactly what to load; a run without the file passes (resolving its
    config names what is unknown)."""
    run_dir = Path(run_dir)
    try:
        recorded = json.loads((run_dir / COMPONENTS).read_text())
    except (OSError, ValueError):
        return  # a run from an earlier version: resolving names what is unknown
    items = [(kind, recorded[kind]) for kind in recorded if kind != "loggers"]
    items += [("logger", item) for item in recorded.get("loggers", [])]
    for kind, item in items:
        if not isinstance(item, dict):
            continue
        try:
            registry.get(kind, item.get("qualified") or item.get("name"))
            continue
        except UsageError:
            pass
        if item.get("source") == "local":
            fix = f"add --plugin {item.get('module')}"
        elif item.get("distribution"):
            fix = f"install it (pip install {item['distribution']}=={item.get('version')}) or enable its plugin {item.get('plugin')!r}"
        else:
            fix = f"enable its plugin {item.get('plugin')!r}"
        raise UsageError(f"{run_dir} was trained with {kind} {item.get('name')!r} from plugin {item.get('plugin')}, which is not loaded: {fix}")


def drop_stale_keys(run_dir: str | os.PathLike, registry, *, confirm: Callable[[list, Path], bool] = lambda keys, backup: True):
    """Rewrite ``run_dir``'s config.toml without the keys its components no longer take (a plugin
    upgraded since the run dropped a parameter; :func:`jaxyard.core.registry.stale.stale_keys`),
    keeping the old file as ``config.toml.bak`` (``.bak1``, ... when that exists). The run
    directory is locked meanwhile, so no resume writes it.

    :param confirm: ``confirm(keys, backup)`` -> whether to go on (the CLI lists them and asks).
    :returns: ``(keys, backup)``: the stale keys found (``[]``: nothing to do) and the old file's
        copy (None when nothing was written).
    """
    from jaxyard.core.registry.settings import dump_toml, read_config_file
    from jaxyard.core.registry.stale import stale_keys, without

    directory = RunDir(run_dir)
    path = directory / CONFIG
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a jaxyard run directory (no {CONFIG})")
    directory.lock()
    try:
        data = read_config_file(path)
        keys = stale_keys(registry, data)
        backup = next(p for p in (path.with_name(f"{CONFIG}.bak{n or ''}") for n in range(1000)) if not p.exists())
        if not keys or not confirm(keys, backup):
            return keys, None
        write_atomic(backup, path.read_bytes())
        write_atomic(path, dump_toml(without(data, keys)))
        return keys, backup
    finally:
        directory.unlock()


def _refuse_a_run(path: Path, *, probe: bool = True) -> None:
    """A directory holding anything but what an uncommitted run leaves is not ours to reuse."""
    if not path.is_dir():
        return
    names = {p.name for p in path.iterdir()}
    if any(not leftover(name) for name in names):
        if probe and LOCK in names:  # a run: say who is writing it, if anyone (reading, never writing its record)
            _raise_if_held(path)
        raise UsageError(f"run directory {path} is not empty; choose another --out, or `jaxyard resume {path}`")


def _raise_if_held(path: Path) -> None:
    try:
        fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # a link: no writer's (lock() refuses it)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts only with a writer's exclusive lock
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirBusy(f"run directory {path} is being written by {holder}; wait for it to finish, or choose another --out") from None
    os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, as its record says (the holder writes it just after locking: a moment's wait)."""
    for _ in range(50):
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']} (since {info['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.01)
    return "another process"


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (a run directory's .json files), written atomically."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _new_file(path: Path) -> tuple[Path, int]:
    """A new temporary file beside ``path`` and its descriptor, made exclusively, never through a
    link, with the mode ``open()`` gives (0o666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def open_append(path: str | os.PathLike, *, read: bool = False) -> int:
    """A descriptor appending to ``path`` (created when missing, 0o644 less the umask), never
    through a link: a link planted in a run or sweep directory (data) would carry the writes
    elsewhere. Every file jaxyard appends to is opened here. ``read``: for reading too.

    :raises UsageError: ``path`` is a link: one line naming it and the way out.
    """
    flags = (os.O_RDWR if read else os.O_WRONLY) | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except OSError as err:
        _refuse_link(Path(path), err)
        raise


def _refuse_link(path: Path, err: OSError) -> None:
    """``err`` (from an ``O_NOFOLLOW`` open of ``path``) as one line when ``path`` is a link."""
    if err.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink():
        raise UsageError(f"{path} is a link (to {os.readlink(path)}), and jaxyard writes nothing through a link in a run or sweep "
                         f"directory (it is data): remove the link") from None


def write_atomic(path: Path, data: str | bytes | Callable[[BinaryIO], Any]) -> None:
    """Write ``data`` (text, bytes, or a function writing to the open file) to ``path`` through
    a temporary file, fsynced then renamed (the directory fsynced too): a reader sees the old
    file or the new one, never a torn one, and a failure (a full disk) leaves no temporary file
    behind. Every file jaxyard writes goes through here (and every file it appends to through
    :func:`open_append`).

    The temporary file (``NAME.<random>.tmp``) is made exclusively (``O_EXCL``), so a link planted
    under that name in a run or sweep directory (which is data) is never followed; ``path``
    itself, a link, is replaced, not written through."""
    tmp, fd = _new_file(path)
    try:
        with open(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

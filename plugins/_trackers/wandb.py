"""The ``wandb`` logger: Weights & Biases, offline unless asked.

Imported by the factory in :mod:`jaxyard.plugins.loggers`, never when components are listed.

``mode="offline"`` (the default) writes ``RUN_DIR/wandb/offline-run-DATE_TIME-ID/`` and contacts
no server; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later. ``mode="online"`` logs
as it goes; ``mode="disabled"`` does nothing. Logged: ``run.config_dict`` as the config,
per-epoch metrics at step = epoch (``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
``lr``, ``time/train``, ``time/val``), the test metrics and timings in the summary, and the exit
code (1 when the run failed).

Kept local and quiet, in every mode: wandb's own error reporting is off
(``WANDB_ERROR_REPORTING=false`` while the run starts, unless set; with it on, wandb's service
looks up a telemetry host even offline); no console capture, no banner; system metrics, git
and code capture are off in offline mode. The ``.wandb`` file is flushed every second
(wandb's default is 15 s and a killed process loses what was not flushed), and each epoch's row
is committed at once.

Bounded and quiet when it fails: online, ``wandb.init`` waits at most :data:`INIT_TIMEOUT`
seconds for the server (wandb's ``init_timeout`` setting, 90 s by default: a start with no
network stalled that long before the logger was dropped; set through ``WANDB_INIT_TIMEOUT`` while
the run starts, unless the user has set it), and what wandb logs or writes to stderr meanwhile is held back
(:class:`~jaxyard.plugins._trackers.common.Noise`): a failure is one :class:`WandbError` line
naming the bound it hit.

Resume: the W&B run id is kept in ``RUN_DIR/wandb_run.json`` and the resumed run re-inits with
``id=..., resume="allow"``. Which epochs W&B already holds is read from the run's earlier
``.wandb`` files in ``RUN_DIR/wandb`` (and, online, from the resumed run's starting step):
restored epochs it lacks are logged at start, epochs it has are not logged again. Offline,
each start is a separate ``offline-run-*`` folder with the same id, and ``wandb sync`` uploads
them in order, into one run. If the earlier files cannot be read, epochs up to
``run.start_epoch`` count as logged and later ones are logged again: after ``wandb sync`` the
server keeps the first copy (it drops steps below a resumed run's current step), which a
resumed run computes again bit for bit anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
import struct
import time
import zlib
from pathlib import Path

import wandb

from jaxyard.core.store.rundir import write_atomic
from jaxyard.plugins._trackers.common import Noise, final_scalars, scalars

RUN_FILE = "wandb_run.json"
FLUSH_SECONDS = 1.0
INIT_TIMEOUT = 30.0  # seconds wandb.init may wait for the server, online (wandb's default: 90)

# Settings in every mode, then offline only; a setting this wandb does not know is left out.
QUIET = {"silent": True, "quiet": True, "console": "off", "reinit": "create_new", "x_transaction_log_flush_interval": FLUSH_SECONDS}
LOCAL = {"x_disable_stats": True, "x_disable_meta": True, "x_disable_machine_info": True,
         "disable_git": True, "disable_code": True, "save_code": False}


class WandbError(Exception):
    """wandb failed: its first line, the bound it hit, and how much of its console output was held back."""


def init_timeout() -> float:
    """How long an online start waits for the server: ``WANDB_INIT_TIMEOUT`` when set (wandb's
    own setting), else :data:`INIT_TIMEOUT`."""
    try:
        return float(os.environ["WANDB_INIT_TIMEOUT"])
    except (KeyError, ValueError):
        return INIT_TIMEOUT


def _settings(mode: str):
    wanted = {**QUIET, **(LOCAL if mode == "offline" else {})}
    known = getattr(wandb.Settings, "model_fields", None)
    return wandb.Settings(**{k: v for k, v in wanted.items() if known is None or k in known})


@contextlib.contextmanager
def _env_defaults(**values: str):
    """Environment variables set (where unset) for this block only."""
    added = [k for k in values if k not in os.environ]
    for key in added:
        os.environ[key] = values[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _new_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


# --- what earlier sessions wrote: the .wandb transaction log ---------------------------------
#
# A .wandb file is ":W&B", a 2-byte magic and a version byte, then LevelDB-log records in 32 KiB
# blocks: CRC-32 (of the type byte, then the data), length, type (1 full, 2 first, 3 middle,
# 4 last), data; each record is a wandb_internal_pb2.Record. A killed process leaves a torn tail:
# reading stops at the first record that does not check out.

BLOCK = 32768
HEADER = 7


def records(data: bytes):
    """The protobuf payloads of a .wandb file's records, in order."""
    if data[:4] != b":W&B":
        raise ValueError("not a .wandb file")
    pos, pending = HEADER, None
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the tail of a block is padding
            pos += left
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        end = pos + HEADER + length
        if kind == 0 or end > len(data) or length > left - HEADER:
            return
        chunk = data[pos + HEADER : end]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return
        pos = end
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3 and pending is not None:
            pending += chunk
        elif kind == 4 and pending is not None:
            yield pending + chunk
            pending = None


def history_steps(path: Path) -> set[int]:
    """The steps of the history rows in a .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    steps = set()
    for raw in records(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            steps.add(int(record.history.step.num))
    return steps


class WandbLogger:
    def __init__(self, directory: Path, *, mode: str = "offline", project: str = "jaxyard", entity: str = "", run_name: str = ""):
        self.directory = Path(directory)
        self.mode = mode
        self.project = project
        self.entity = entity or None
        self.run_name = run_name or self.directory.name
        self.wrun = None
        self.logged: set[int] = set()  # epochs W&B holds: not logged again
        self.noise = Noise("wandb", ("wandb",), WandbError)

    def _run_id(self) -> str:
        try:
            saved = json.loads((self.directory / RUN_FILE).read_text())
            if isinstance(saved, dict) and saved.get("id"):
                return str(saved["id"])
        except (OSError, ValueError):
            pass
        run_id = _new_id()  # saved before wandb starts: a kill from here on still resumes this run
        record = {"id": run_id, "project": self.project, "entity": self.entity}
        write_atomic(self.directory / RUN_FILE, json.dumps(record) + "\n")
        return run_id

    def _earlier_steps(self, run_id: str, start_epoch: int) -> set[int]:
        """The epochs this run's earlier sessions wrote to their .wandb files."""
        files = sorted((self.directory / "wandb").glob(f"*-{run_id}/run-{run_id}.wandb"))
        try:
            return set().union(*(history_steps(f) for f in files))
        except Exception:  # unreadable (another wandb's format?): take the restored epochs as there
            return set(range(1, start_epoch + 1))

    def _wait_for_a_new_second(self, run_id: str) -> None:
        """wandb names a session's folder by the second it starts (local time): a second start of
        the run within that second would reuse the folder and overwrite the first one's file."""
        while any((self.directory / "wandb").glob(f"*-{time.strftime('%Y%m%d_%H%M%S')}-{run_id}")):
            time.sleep(1.0 - time.time() % 1.0 + 0.01)

    def start(self, run) -> None:
        if self.mode == "disabled":
            return
        started = time.monotonic()

        def explain(err: BaseException) -> str:  # the start waited as long as it may: say so
            waited, bound = time.monotonic() - started, init_timeout()
            if self.mode != "online" or waited < bound:
                return ""
            return f"; mode online: no answer from the W&B server within {bound:g} s (WANDB_INIT_TIMEOUT=SECONDS waits longer)"

        with self.noise.call(explain=explain):
            self._start(run)

    def _start(self, run) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        run_id = self._run_id()
        self.logged = self._earlier_steps(run_id, run.start_epoch)
        self._wait_for_a_new_second(run_id)
        bound = {"WANDB_INIT_TIMEOUT": f"{INIT_TIMEOUT:g}"} if self.mode == "online" else {}  # wandb's own variable, unless set
        with _env_defaults(WANDB_ERROR_REPORTING="false", **bound):
            self.wrun = wandb.init(
                project=self.project,
                entity=self.entity,
                name=self.run_name,
                id=run_id,
                resume="allow",
                dir=str(self.directory),
                config=run.config_dict,
                mode=self.mode,
                settings=_settings(self.mode),
            )
        first = int(getattr(self.wrun, "starting_step", 0) or 0)  # online, resumed: the server holds steps below
        self.logged |= set(range(first))
        for record in run.history:  # restored epochs W&B lacks
            self.log_epoch(record)

    def log_epoch(self, record: dict) -> None:
        if self.wrun is None or record["epoch"] in self.logged:
            return
        with self.noise.call():
            self.wrun.log(scalars(record), step=int(record["epoch"]), commit=True)
        self.logged.add(record["epoch"])

    def finish(self, run, status: str, result=None) -> None:
        if self.wrun is None:
            self.noise.release()
            return
        self.noise.last_call(run, lambda: self._finish(status, result))

    def _finish(self, status: str, result) -> None:
        wrun, self.wrun = self.wrun, None
        try:
            if status == "finished":
                summary = final_scalars(result)
                if result is not None and getattr(result, "stop_reason", None):
                    summary["stop_reason"] = str(result.stop_reason)
                if summary:
                    wrun.summary.update(summary)
        finally:
            wrun.finish(exit_code=0 if status == "finished" else 1)

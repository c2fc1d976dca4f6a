"""The ``tensorboard`` logger: TensorBoard event files written with tensorboardX.

Imported by the factory in :mod:`jaxyard.plugins.loggers`, never when components are listed.

Layout: ``RUN_DIR/tensorboard/events.out.tfevents.*``, one file per start (a resume adds one).
Scalars at step = epoch: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``lr``,
``time/train``, ``time/val`` (seconds per epoch); at the end ``test/loss``, ``test/acc`` and
``time/total_s``, ``time/train_s``, ``time/compile_s`` at the last epoch's step. A new run writes
its resolved configuration (TOML) as the text ``config`` at step 0.

Events are written synchronously (tensorboardX's ``EventsWriter``, one event per epoch, flushed
and fsynced at once). ``SummaryWriter`` is not used on purpose: its ``flush()`` does not drain the
queue its background thread writes from, so a process killed just after an epoch loses that
epoch's last scalars.

Resume: the new file starts with the same two events ``SummaryWriter(purge_step=...)`` writes,
with ``purge_step = run.start_epoch + 1``: TensorBoard's Python reader then drops the scalars of
the earlier files at later steps (the epochs logged after the restored checkpoint), and its
Rust data server drops a series' points from the step a resumed run logs again onwards; either
way each epoch appears once, with the values of the resumed run. The config text is written
only into a folder without event files (a purge would not remove text).
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboardX import summary as tbx_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary

from jaxyard.core.registry.settings import dump_toml
from jaxyard.plugins._trackers.common import final_scalars, scalars

EVENT_FILES = "events.out.tfevents.*"


class TensorboardLogger:
    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self.writer: EventsWriter | None = None
        self.last_epoch = 0

    def start(self, run) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        earlier = sorted(self.logdir.glob(EVENT_FILES))
        # TensorBoard reads a folder's event files in name order: the name holds the time in
        # whole seconds and the host; the suffix orders two files started within one second
        # (tensorboardX would otherwise give them the same name and truncate the first).
        self.writer = EventsWriter(str(self.logdir / "events"), f".{len(earlier):04d}")
        history = list(run.history)
        self.last_epoch = history[-1]["epoch"] if history else 0
        if earlier:
            # Resumed (or restarted from scratch) in the same folder: hide the epochs written
            # after the restored ones. The config text at step 0 stays (TensorBoard's purge
            # leaves text alone anyway), and is not written again.
            purge = run.start_epoch + 1
            self._write(Event(step=purge, file_version="brain.Event:2"))
            self._write(Event(step=purge, session_log=SessionLog(status=SessionLog.START)))
        else:
            text = "\n".join("    " + line for line in dump_toml(run.config_dict).splitlines())  # a Markdown code block
            self._write(Event(step=0, summary=tbx_summary.text("config", text)))
            for record in history:  # a logger added when resuming: the restored epochs too
                self._write(self._scalars(record["epoch"], scalars(record)))
        self.writer.flush()

    def log_epoch(self, record: dict) -> None:
        self.last_epoch = record["epoch"]
        self._write(self._scalars(record["epoch"], scalars(record)))
        self.writer.flush()  # written and fsynced: a kill keeps every finished epoch

    def finish(self, run, status: str, result=None) -> None:
        if self.writer is None:
            return
        try:
            values = final_scalars(result) if status == "finished" else {}
            if values:
                self._write(self._scalars(self.last_epoch, values))
        finally:
            self.writer.close()
            self.writer = None

    @staticmethod
    def _scalars(step: int, values: dict[str, float]) -> Event:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        return Event(wall_time=time.time(), step=int(step), summary=summary)

    def _write(self, event: Event) -> None:
        if not event.wall_time:
            event.wall_time = time.time()
        self.writer.write_event(event)

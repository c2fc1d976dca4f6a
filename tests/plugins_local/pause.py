"""Holds a run at a named point until the test says go: a test acts (kills, reads, races) at an
exact moment of the run instead of after a sleep. Does nothing unless PAUSE_DIR is set.

PAUSE_AT: comma-separated points --
  ``epoch-N``    after epoch N's end, its checkpoint saved (last of the epoch-end hooks);
  ``publish-N``  the run's N-th orbax save written in full, not yet renamed into place (orbax's
                 public ``AsyncOptions.post_finalization_callback``, which runs just before);
  ``end``        the run's end: summary.json written, before the end-of-run plugins (curves).
At a point it writes PAUSE_DIR/paused-POINT (-pI in process I of a job) and waits for
PAUSE_DIR/go-POINT, which a test that kills the run never writes.
"""

import os
import time
from pathlib import Path

import jaxyard

DIRECTORY = os.environ.get("PAUSE_DIR")
POINTS = set(filter(None, os.environ.get("PAUSE_AT", "").split(","))) if DIRECTORY else set()


def pause(point: str) -> None:
    if point not in POINTS:
        return
    process = os.environ.get("JAXYARD_PROCESS_ID")
    Path(DIRECTORY, f"paused-{point}" + (f"-p{process}" if process else "")).touch()
    while not Path(DIRECTORY, f"go-{point}").exists():
        time.sleep(0.01)


@jaxyard.hookimpl(trylast=True)  # registered after the built-ins: called after checkpointing's trylast hook
def jaxyard_on_epoch_end(record):
    pause(f"epoch-{record['epoch']}")


@jaxyard.hookimpl(tryfirst=True)
def jaxyard_on_run_end():
    pause("end")


if any(p.startswith("publish-") for p in POINTS):
    import dataclasses

    import orbax.checkpoint.options as orbax_options

    published = [0]

    @dataclasses.dataclass
    class PausingAsyncOptions(orbax_options.AsyncOptions):
        def __post_init__(self):
            inner = self.post_finalization_callback

            def callback():
                if inner is not None:
                    inner()
                published[0] += 1
                pause(f"publish-{published[0]}")

            self.post_finalization_callback = callback

    orbax_options.AsyncOptions = PausingAsyncOptions

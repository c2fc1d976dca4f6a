"""The processes of a job leave together, process 0 last: at exit (a failing process of a job
leaves through os._exit, cli._leave_job), each writes EXIT_DIR/exiting-I (its pid) and waits until
every process of the job has; then process 0, which holds the job's coordination service, waits
until the others are gone (a process outliving the service logs its loss). The launcher's
interrupt is ignored meanwhile. `launch` stops the other processes as soon as one fails: without
this, a test of what every process prints would depend on which process finished first.
Does nothing outside a job or without EXIT_DIR."""

import atexit
import os
import signal
import time
from pathlib import Path

DIRECTORY = os.environ.get("EXIT_DIR")
PROCESS = os.environ.get("JAXYARD_PROCESS_ID")
COUNT = os.environ.get("JAXYARD_NUM_PROCESSES")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # exited, not yet reaped by the launcher


def _leave_together() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher stopping us: we are stopping
    mine = Path(DIRECTORY, f"exiting-{PROCESS}")
    mine.with_suffix(".tmp").write_text(str(os.getpid()))
    os.replace(mine.with_suffix(".tmp"), mine)
    markers = [Path(DIRECTORY, f"exiting-{i}") for i in range(int(COUNT))]
    while not all(m.exists() for m in markers):
        time.sleep(0.01)
    if PROCESS == "0":
        others = [int(m.read_text()) for m in markers[1:]]
        while not all(_gone(pid) for pid in others):
            time.sleep(0.01)


if DIRECTORY and PROCESS is not None and COUNT:
    _os_exit = os._exit

    def _exit_together(code):
        _leave_together()
        _os_exit(code)

    atexit.register(_leave_together)
    os._exit = _exit_together

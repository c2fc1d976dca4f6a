"""jaxyard's child processes on this machine: a job's (``launch``) and a sweep's workers (:func:`run_workers`).

``jaxyard launch -n M -- run ...`` starts the M processes of one job. Each process is
``python -m jaxyard.cli ARGS`` with the job in its environment (a loopback coordinator on a free
port, the process count, its index: :func:`jaxyard.core.scale.processes.environment`). Their output
comes back line by line, each line prefixed ``[i]``. When one process fails, the others are stopped
(an interrupt, then a kill after ``grace`` seconds): a job whose process died cannot go on, and the
survivors would otherwise wait in a collective for it. The exit code is the worst of those the
processes ended with on their own.

A sweep's workers are independent processes on one study: one failing stops none of the others.

Either way a child is given the global options of its parent (:func:`global_options`).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from jaxyard.core.errors import UsageError
from jaxyard.core.scale import processes

Echo = Callable[[str], None]

# gloo (host-device collectives) prints its connections from C++; two threads of one process may
# interleave them: drop those lines and their broken halves
_NOISE = ("[Gloo]", "peer ranks. Expected number of connected peer ranks is")


def global_options(
    *, registry: str | None = None, plugins: Sequence[str] = (), disable: Sequence[str] = (), strict: bool = False, debug: bool = False
) -> list[str]:
    """The global options (``jaxyard OPTIONS COMMAND ...``) that give a child process the plugins
    and registry of its parent: ``--registry``, ``--plugin``, ``--disable``, ``--strict-plugins``
    and ``--debug``, as the parent was given them. (``--cpu-devices`` reaches a child through the
    environment, in ``XLA_FLAGS``.)"""
    valued = [*([("--registry", registry)] if registry else []), *(("--plugin", p) for p in plugins), *(("--disable", d) for d in disable)]
    return [*(x for pair in valued for x in pair), *["--strict-plugins"] * bool(strict), *["--debug"] * bool(debug)]


#: the global options that take a value: those :func:`global_options` gives, and ``--cpu-devices``
_VALUED = ("--registry", "--plugin", "--disable", "--cpu-devices")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(
    count: int,
    args: Sequence[str],
    *,
    echo: Echo,
    echo_err: Echo,
    host: str = "127.0.0.1",
    port: int | None = None,
    grace: float = 5.0,
) -> int:
    """Run ``jaxyard ARGS`` as ``count`` processes of one job; returns the job's exit code."""
    if count < 1:
        raise UsageError(f"-n {count}: expected at least 1 process")
    command = _command(args)
    if command is None:
        raise UsageError("nothing to launch: give the command after --, e.g. jaxyard launch -n 2 -- run --epochs 2")
    if command not in JOB_COMMANDS:
        raise UsageError(f"jaxyard {command} does not join a job: launch runs {', '.join(JOB_COMMANDS)}")
    if port:  # taken, the coordination service would fail to start (gRPC's raw line, or a crash of process 0)
        taken = processes.port_in_use(host, port)
        if taken:
            raise UsageError(f"--port {port}: the job cannot be served at {host}:{port}: {taken}; "
                             f"choose another port, or leave --port out for a free one")
    coordinator = f"{host}:{port or free_port(host)}"
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    stopped: set[int] = set()  # stopped by us: their exit codes are not the job's
    codes: dict[int, int] = {}
    gone = threading.Event()  # the output's reader has gone: the job is stopped as on Ctrl-C
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}  # as Ctrl-C: stop them all
    try:
        for i in range(count):
            env = {**os.environ, **processes.environment(coordinator, count, i), "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen([sys.executable, "-m", "jaxyard.cli", *args], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
            procs.append(proc)
            for stream, out in ((proc.stdout, echo), (proc.stderr, echo_err)):
                pump = threading.Thread(target=_pump, args=(stream, f"[{i}] ", out, lock, gone), daemon=True)
                pump.start()
                pumps.append(pump)
        while len(codes) < count:
            if gone.is_set():  # `launch ... | head`: stopped, resumable, and the command ends quietly (a broken pipe)
                raise BrokenPipeError(errno.EPIPE, "the output's reader has gone")
            for i, proc in enumerate(procs):
                if i in codes or proc.poll() is None:
                    continue
                codes[i] = proc.returncode
                if proc.returncode != 0 and not stopped:
                    others = [j for j in range(count) if j != i and procs[j].poll() is None]
                    with lock:
                        echo_err(f"jaxyard launch: process {i} of {count} {_ended(proc.returncode)}; "
                                 f"stopping the other {len(others)} process(es)" if others else
                                 f"jaxyard launch: process {i} of {count} {_ended(proc.returncode)}")
                    stopped.update(others)
                    _stop([procs[j] for j in others], grace)
            time.sleep(0.05)
    except BaseException:  # Ctrl-C, SIGTERM, SIGHUP, a process that could not start: none is left behind
        stopped.update(range(count))
        _stop(procs, grace)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for pump in pumps:
            pump.join(timeout=5)
    own = [_exit_code(c) for i, c in codes.items() if i not in stopped]
    return max(own, default=1)


#: the commands that join a job (the others would run as M independent copies)
JOB_COMMANDS = ("run", "resume", "check")


def _command(args: Sequence[str]) -> str | None:
    """The subcommand in ``args`` (after any global options)."""
    it = iter(args)
    for arg in it:
        if arg in _VALUED:
            next(it, None)
        elif not arg.startswith("-"):
            return arg
    return None


def run_workers(commands: Sequence[Sequence[str]], *, echo: Echo) -> list[int]:
    """Run ``jaxyard ARGS`` for each ``ARGS`` of ``commands`` as processes of their own at once
    (not a job: a sweep's workers), each line of a process's output (stdout and stderr as one)
    echoed prefixed ``[worker i]``; waits for all and returns their exit codes. An interrupt
    terminates them all."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "jaxyard.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for args in commands
    ]

    def relay(i, proc):
        gone = False  # the output's reader has gone (`| head`): the rest is read and dropped, the workers go on
        for line in proc.stdout:
            if gone:
                continue
            try:
                echo(f"[worker {i}] {line.rstrip()}")
            except BrokenPipeError:
                gone = True

    threads = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    for t in threads:
        t.join(timeout=5)
    return [p.returncode for p in procs]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _pump(stream, prefix: str, out: Echo, lock: threading.Lock, gone: threading.Event) -> None:
    """A process's lines to ``out``, prefixed, less gloo's. Once ``out``'s reader has gone (a broken
    pipe: ``launch ... | head``), ``gone`` is set and the rest is read and dropped (a process whose
    pipe fills would block)."""
    noise = False
    for line in stream:
        if gone.is_set():
            continue
        text = line.rstrip("\n")
        # gloo's lines, and the bare count a line of it may be split from
        noise = any(n in text for n in _NOISE) or (noise and text.strip().isdigit())
        if noise:
            continue
        with lock:
            try:
                out(prefix + text)
            except BrokenPipeError:
                gone.set()


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """An interrupt (a clean exit where a process can take one), then a kill after ``grace`` s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code

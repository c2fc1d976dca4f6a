"""A job of several processes on JAX's own runtime: joining it (``jax.distributed``), and the few
things the processes must agree on.

Every process runs the same program: the same configuration, the same compiled steps, its share
of each batch. Process 0 is the *primary*: it alone prints, writes the run directory, the metrics,
the loggers' output, the plot and the checkpoints; what only it decides (the run directory's name,
the checkpoint restored, whether a save succeeded) reaches the others through :func:`from_primary`,
a broadcast over the job's devices. Nothing is pickled or sent over sockets of our own.

One process (no job joined) is the common case: every function here then costs nothing.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from jaxyard.core.errors import JaxyardError, UsageError, one_line

# jax is imported inside the functions: join() must run before jax initialises its backends

ENV_COORDINATOR = "JAXYARD_COORDINATOR"
ENV_NUM_PROCESSES = "JAXYARD_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXYARD_PROCESS_ID"

T = TypeVar("T")


def join(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cluster: bool = False,
    bind: str | None = None,
    timeout: int = 300,
) -> bool:
    """Join a multi-process job (``jax.distributed.initialize``) before jax starts; False when
    none is asked for.

    :param coordinator: ``HOST:PORT`` of process 0's coordination service.
    :param cluster: let JAX find the job in its environment (SLURM, Open MPI, ...) instead.
    :param bind: where process 0's service listens; default: the coordinator's own address when
        that is a loopback one (a local job: nothing outside this machine may join), else every
        interface (JAX's default; a hostname may resolve to a loopback address on its own host).
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not cluster and not any(given):
        return False
    if not cluster and not all(given):
        missing = [n for n, g in zip(("--coordinator", "--num-processes", "--process-id"), given, strict=True) if not g]
        raise UsageError(f"joining a multi-process job needs --coordinator, --num-processes and --process-id; missing {', '.join(missing)}"
                         " (or --cluster on SLURM and the other clusters JAX detects)")
    if coordinator is not None:
        _check_address("--coordinator", coordinator)
    if bind is not None:
        _check_address("--coordinator-bind", bind)
    if num_processes is not None and num_processes < 1:
        raise UsageError(f"--num-processes {num_processes}: expected at least 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id {process_id}: expected 0 to {num_processes - 1} (--num-processes {num_processes})")
    if process_id == 0 and coordinator is not None:  # process 0 serves the job: its port must be free
        listen = bind or _loopback(coordinator) or f"0.0.0.0:{coordinator.rpartition(':')[2]}"
        host, _, port = listen.rpartition(":")
        taken = port_in_use(host.strip("[]"), int(port))
        if taken:
            raise UsageError(f"process 0 cannot serve the job at {listen}: {taken}; choose another port")
    import jax

    # host devices talk over gloo (the default, "none", cannot run a collective across processes)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # jaxyard has no preemption sync points; the service's polling thread only adds a way to die at the
    # end: when process 0 closes the job first, it fails to reach the closed service, and its error
    # made a process that was exiting with its one-line error abort with gRPC's lines (seen under load)
    jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(
            coordinator, num_processes, process_id, coordinator_bind_address=bind or _loopback(coordinator),
            initialization_timeout=timeout,
        )
    except Exception as err:
        where = f"the job at {coordinator} as process {process_id} of {num_processes}" if coordinator else "the cluster's job"
        raise JaxyardError(f"could not join {where}: {one_line(err, first_line=True)}") from err
    return True


def _loopback(address: str | None) -> str | None:
    """``address`` when its host is a loopback one, else None."""
    import ipaddress

    if address is None:
        return None
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return address
    try:
        return address if ipaddress.ip_address(host).is_loopback else None
    except ValueError:  # a hostname
        return None


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (another process holds it), or None when it can.
    A bind test, as gRPC's coordination service binds (address reuse allowed: a port in TIME_WAIT
    is free). An address that does not resolve is not judged here (None)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError):
        return None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            return "another process is listening on it" if err.errno == errno.EADDRINUSE else str(err.strerror or err)
    return None


def _check_address(option: str, address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{option} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:12355")


def count() -> int:
    """Processes in the job (1 when none was joined)."""
    if not joined():
        return 1
    import jax

    return jax.process_count()


def index() -> int:
    """This process's index in the job (0 when none was joined)."""
    if not joined():
        return 0
    import jax

    return jax.process_index()


def is_primary() -> bool:
    return index() == 0


def joined() -> bool:
    """Whether a job was joined, without starting jax's backends when it was not."""
    import sys

    if "jax" not in sys.modules:
        return False
    from jax._src import distributed

    return distributed.global_state.client is not None


def from_primary(fn: Callable[[], T], *, share: Callable[[T | None], Any] | None = None) -> T:
    """``fn()`` on the primary; its outcome on every process.

    The primary runs ``fn``. Its error, if any, is raised on every process (the others raise a
    :class:`JaxyardError` of the same kind with the same line), so no process waits for a
    collective that will never come. Otherwise the result reaches the others through ``share``
    (called on every process with the primary's result, None elsewhere: it returns the value
    on all); without ``share`` the others get None.
    """
    if count() == 1:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if is_primary():
        try:
            result = fn()
        except BaseException as err:  # noqa: B036 - every process must learn of it, even an interrupt
            error = err
    outcome = broadcast_json({"error": _describe(error)} if error is not None else {"error": None})
    if error is not None:
        raise error
    if outcome["error"] is not None:
        raise _rebuild(outcome["error"])
    return share(result) if share is not None else result


def together(fn: Callable[[], T]) -> T:
    """``fn()`` on every process, then agree: if it failed anywhere, every process raises the
    first failing process's error (otherwise a process that failed alone would leave the others
    waiting at their next collective, and they would report a lost process, not the cause)."""
    if count() == 1:
        return fn()
    import numpy as np
    from jax.experimental import multihost_utils

    result: Any = None
    error: BaseException | None = None
    try:
        result = fn()
    except BaseException as err:  # noqa: B036 - every process must learn of it
        error = err
    text = json.dumps(_describe(error) if error is not None else None).encode()[:_AGREE_BYTES]
    gathered = multihost_utils.process_allgather(np.frombuffer(text.ljust(_AGREE_BYTES, b" "), np.uint8))
    if error is not None:
        raise error
    for row in np.asarray(gathered).reshape(count(), _AGREE_BYTES):
        outcome = _loads(row.tobytes())
        if outcome is not None:
            raise _rebuild(outcome)
    return result


_AGREE_BYTES = 1024
_SHOWN = 4  # differing keys named before "and N more" (the line must fit _AGREE_BYTES)


def agree(what: str, values: Mapping[str, Any], *, fix: str) -> None:
    """Every process of the job holds the same ``values`` (a flat ``{key: JSON value}``, e.g. the
    resolved configuration): their sha256 digests are compared with process 0's. A difference is
    one line on every process, naming the keys that differ with each side's value, then ``fix``.
    Two collectives: process 0's values reach every process, then every process's verdict is
    agreed (:func:`together`). One process: nothing happens."""
    if count() == 1:
        return
    import hashlib

    def digest(data: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()

    own = json.loads(json.dumps(dict(values), allow_nan=True))  # as process 0's reads back
    primary = broadcast_json(own if is_primary() else None)

    def check() -> None:
        if digest(own) == digest(primary):
            return
        keys = [k for k in dict.fromkeys([*primary, *own]) if primary.get(k, _ABSENT) != own.get(k, _ABSENT)]
        shown = ", ".join(f"{k} {_short(primary.get(k, _ABSENT))} vs {_short(own.get(k, _ABSENT))}" for k in keys[:_SHOWN])
        more = f", and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
        raise UsageError(f"the processes of the job were given different {what}s: process 0 vs process {index()}: {shown}{more}; {fix}")

    together(check)


_ABSENT = object()  # a key one side lacks


def _short(value: Any) -> str:
    text = "(none)" if value is _ABSENT else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data.decode(errors="replace"))
    except ValueError:  # a message cut at _AGREE_BYTES
        return {"message": "another process of the job failed (its output says why)", "exit_code": 1}


def _describe(err: BaseException) -> dict[str, Any]:
    if isinstance(err, JaxyardError):
        return {"message": str(err), "exit_code": err.exit_code}
    return {"message": f"process {index()} failed: {one_line(err)}", "exit_code": 1}


def _rebuild(error: Mapping[str, Any]) -> JaxyardError:
    """The primary's error, as this process raises it: the same line and exit code."""
    err = JaxyardError(error["message"])
    err.exit_code = int(error["exit_code"])
    return err


_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "coordination service", "heartbeat")


def lost_contact(err: BaseException) -> JaxyardError | None:
    """A collective that failed because another process of the job is gone (killed, failed), as
    one line; None for any other error. Looks through the chain of causes (a plugin's error that
    wraps it, for one)."""
    if count() == 1:
        return None
    seen: BaseException | None = err
    while seen is not None:
        text = str(seen)
        if type(seen).__name__ == "JaxRuntimeError" and any(marker in text for marker in _LOST):
            return JaxyardError(
                f"process {index()} lost contact with another process of the job ({count()} processes): it stopped or failed, "
                f"and its own output says why ({one_line(seen, 200, first_line=True)})"
            )
        seen = seen.__cause__
    return None


def broadcast_json(value: Any) -> Any:
    """The primary's JSON value on every process (a collective: every process calls it)."""
    if count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    data = json.dumps(value).encode() if is_primary() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int64)))
    buffer = np.frombuffer(data.ljust(size, b"\0"), np.uint8)
    received = multihost_utils.broadcast_one_to_all(buffer)
    return json.loads(np.asarray(received, np.uint8).tobytes().decode())


def broadcast_arrays(arrays: Mapping[str, Any] | None, structure: Mapping[str, tuple[list[int], str]]) -> dict[str, Any]:
    """The primary's host arrays (``structure``: name -> (shape, dtype) on every process)."""
    import numpy as np

    if count() == 1:
        assert arrays is not None
        return dict(arrays)
    from jax.experimental import multihost_utils

    out = {}
    for name, (shape, dtype) in structure.items():  # one array at a time: the devices hold one at most
        value = np.asarray(arrays[name]) if arrays is not None else np.zeros(shape, dtype)
        out[name] = np.asarray(multihost_utils.broadcast_one_to_all(value)).astype(dtype, copy=False)
    return out


def host_copy(leaf, *, needed: bool = True) -> Any:
    """A host (NumPy) copy of an array, gathered from every process when it is sharded over
    several (a collective: every process calls it). ``needed=False``: only take part in the
    gathering (None when there is none to take part in)."""
    import numpy as np

    if getattr(leaf, "is_fully_addressable", True) or getattr(leaf, "is_fully_replicated", False):
        return np.array(leaf, copy=True) if needed else None
    from jax.experimental import multihost_utils

    return np.array(multihost_utils.process_allgather(leaf, tiled=True), copy=True)


def environment(coordinator: str, num_processes: int, process_id: int) -> dict[str, str]:
    """The environment that makes ``jaxyard run``/``resume`` join a job (what ``launch`` sets)."""
    return {ENV_COORDINATOR: coordinator, ENV_NUM_PROCESSES: str(num_processes), ENV_PROCESS_ID: str(process_id)}


__all__ = ["agree", "broadcast_arrays", "broadcast_json", "count", "environment", "from_primary", "host_copy", "index", "is_primary", "join",
           "lost_contact", "port_in_use", "together"]

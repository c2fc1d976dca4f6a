"""Where a run's arrays live: one device, or a 1-D ``data`` mesh over several devices, of one
process or of every process of a job (:mod:`jaxyard.core.scale.processes`).

On a mesh the global batch (``run.batch_size``) is split along ``data``; the model and optimizer
state are replicated, or with ``run.shard_params`` split too (each array along its largest
dimension the device count divides: ZeRO-3/FSDP style). XLA inserts the collectives: the
gradient is the global batch's mean, so the numbers are one device's to floating-point
tolerance. Checkpoints hold host arrays, so they restore in any layout.

Over several processes the mesh holds ``run.devices`` devices of each, in process order. Each
process puts only its block of every in-memory split on its devices (the global array is
assembled with ``jax.make_array_from_process_local_data``; padding rows are zeros, marked 0 in the
split's row mask, never drawn or counted), and only its rows of every streamed batch.
"""

from __future__ import annotations

import math
import os
from typing import Any

import attrs

from jaxyard.core.errors import UsageError

# jax is imported inside the functions: the CLI calls use_cpu_devices before jax may be imported

AXIS = "data"
ENV_CPU_DEVICES = "JAXYARD_CPU_DEVICES"


def use_cpu_devices(count: int | str | None) -> None:
    """Make ``count`` host (CPU) devices; must run before jax initialises its backends (the CLI
    can: it imports jax late). For tests, and for many-core CPUs."""
    if count in (None, ""):
        return
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--cpu-devices {count!r}: expected a positive integer")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])


@attrs.frozen
class Layout:
    """A mesh (None: one device, nothing sharded) and whether the state is sharded on it."""

    mesh: Any = None
    shard_params: bool = False
    processes: int = 1  # of the job whose devices the mesh spans
    process: int = 0  # this one's index

    @property
    def devices(self) -> int:
        return self.mesh.size if self.mesh is not None else 1

    @property
    def batch(self):
        """A batch's rows split along ``data`` (a NamedSharding)."""
        from jax.sharding import NamedSharding, PartitionSpec

        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self):
        from jax.sharding import NamedSharding, PartitionSpec

        return NamedSharding(self.mesh, PartitionSpec())

    def state_shardings(self, state):
        """Each state array's sharding: replicated, or with ``shard_params`` split along its
        largest dimension that the device count divides (replicated when none does)."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        n, replicated = self.devices, self.replicated

        def spec(leaf):
            shape = getattr(leaf, "shape", ())
            if self.shard_params:
                dims = sorted((d for d in range(len(shape)) if shape[d] % n == 0 and shape[d] >= n), key=lambda d: -shape[d])
                if dims:
                    return NamedSharding(self.mesh, PartitionSpec(*[AXIS if d == dims[0] else None for d in range(len(shape))]))
            return replicated

        return jax.tree.map(spec, state)

    def place_state(self, state):
        import jax

        if self.mesh is None:
            return state
        if self.processes == 1:
            return jax.device_put(state, self.state_shardings(state))
        return jax.tree.map(_put_global, state, self.state_shardings(state))  # every process holds the same values

    def place_data(self, array, fill=0):
        """A whole split's array on the layout's devices: replicated over one process's, or over
        a job's split by rows (this process's block of them, padded with ``fill``)."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        if self.mesh is None:  # (a transfer: jnp.asarray lowers and loads a program per shape)
            return jax.device_put(array) if isinstance(array, np.ndarray) else jnp.asarray(array)
        if self.processes == 1:
            return jax.device_put(array, self.replicated)
        block = self.rows(len(array)) // self.processes  # equal blocks: every device holds as many rows
        rows = np.asarray(array[self.process * block:(self.process + 1) * block])
        if len(rows) < block:
            rows = np.concatenate([rows, np.full((block - len(rows), *rows.shape[1:]), fill, rows.dtype)])
        return jax.make_array_from_process_local_data(self.batch, rows, (block * self.processes, *rows.shape[1:]))

    def place_batch(self, *arrays):
        """A streamed batch (every process holds all of it; each argument an array or a pytree of
        them): over a job, each process contributes only its rows to one global array; otherwise
        unchanged (the step splits it)."""
        if self.processes == 1:
            return arrays
        import jax

        def share(a):
            size = len(a) // self.processes
            return jax.make_array_from_process_local_data(self.batch, a[self.process * size:(self.process + 1) * size], a.shape)

        return tuple(jax.tree.map(share, a) for a in arrays)

    def rows(self, size: int) -> int:
        """``size`` rounded up to rows every device of the mesh gets equally many of."""
        return self.devices * math.ceil(size / self.devices)

    def describe(self) -> str:
        """In words, with the backend: ``1 cpu device (backend cpu)``, ``4 gpu devices, batch split
        along 'data', state replicated (NVIDIA H100 80GB HBM3, backend cuda)``."""
        import jax

        device = jax.local_devices()[0]
        kind = f"{device.device_kind}, " if device.device_kind.lower() != device.platform else ""
        backend = f"({kind}backend {getattr(getattr(device, 'client', None), 'platform', None) or jax.default_backend()})"  # cuda, rocm, ...
        if self.mesh is None:
            return f"1 {device.platform} device {backend}"
        what = "sharded" if self.shard_params else "replicated"
        where = f" ({self.processes} processes x {self.devices // self.processes})" if self.processes > 1 else ""
        return f"{self.devices} {device.platform} devices{where}, batch split along '{AXIS}', state {what} {backend}"


def _put_global(leaf, sharding):
    """A process's copy of an array (the same on every process) as one array over a job's mesh."""
    import jax
    import numpy as np

    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put_global(jax.random.key_data(leaf), sharding), impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def make_layout(devices: int | str, shard_params: bool, batch_size: int, *, unshard: str = "--set run.shard_params=false") -> Layout:
    """The layout of ``run.devices`` (``all`` or N of each process's local devices) for ``batch_size``.
    ``unshard``: how the command at hand turns ``run.shard_params`` off, named in the error that
    refuses it on one device (``resume`` has ``--no-shard-params``)."""
    import jax
    import numpy as np

    from jaxyard.core.scale import processes

    available = jax.local_devices()
    per_process = len(available) if devices == "all" else int(devices)
    if per_process > len(available):
        raise UsageError(
            f"run.devices = {devices}, but this process has {len(available)} {available[0].platform} device(s); "
            f"use at most {len(available)} (or --cpu-devices N for host devices)"
        )
    count = processes.count()
    n = per_process * count
    if n == 1:
        if shard_params:
            more = ("--devices all" if len(available) > 1 else "--cpu-devices N for N host devices" if available[0].platform == "cpu"
                    else "")
            raise UsageError(f"run.shard_params = true needs several devices, but run.devices = {devices} gives 1 {available[0].platform} "
                             f"device: use {unshard}" + (f", or more devices ({more})" if more else ""))
        return Layout()
    if batch_size % n:
        where = f"{count} processes x {per_process}" if count > 1 else f"run.devices = {devices}"
        raise UsageError(
            f"run.batch_size = {batch_size} does not divide over {n} devices ({where}); "
            f"use a multiple of {n}, e.g. {batch_size + n - batch_size % n}"
        )
    if count == 1:
        mesh = jax.make_mesh((n,), (AXIS,), devices=available[:n], axis_types=(jax.sharding.AxisType.Auto,))
        return Layout(mesh, shard_params)
    # each process's first devices in process order (not make_mesh's, which may reorder them): process p's
    # devices hold the p-th block of every split's rows
    chosen = [d for p in range(count) for d in [d for d in jax.devices() if d.process_index == p][:per_process]]
    mesh = jax.sharding.Mesh(np.array(chosen), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    return Layout(mesh, shard_params, count, processes.index())

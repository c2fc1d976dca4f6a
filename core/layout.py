"""Where a run's arrays live: one device, or a 1-D ``data`` mesh over several local devices.

On a mesh the global batch (``run.batch_size``) is split along ``data``; the model and optimizer
state are replicated, or with ``run.shard_params`` split too (each array along its largest
dimension the device count divides: ZeRO-3/FSDP style). XLA inserts the collectives: the
gradient is the global batch's mean, so the numbers are one device's to floating-point
tolerance. Checkpoints hold host arrays, so they restore in any layout.
"""

from __future__ import annotations

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

        return state if self.mesh is None else jax.device_put(state, self.state_shardings(state))

    def place_data(self, array):
        import jax

        return array if self.mesh is None else jax.device_put(array, self.replicated)

    def describe(self) -> str:
        import jax

        if self.mesh is None:
            return f"1 device ({jax.devices()[0].platform})"
        what = "sharded" if self.shard_params else "replicated"
        return f"{self.devices} {jax.devices()[0].platform} devices, batch split along '{AXIS}', state {what}"


def make_layout(devices: int | str, shard_params: bool, batch_size: int) -> Layout:
    """The layout of ``run.devices`` (``all`` or N of the local devices) for ``batch_size``."""
    import jax

    available = jax.local_devices()
    n = len(available) if devices == "all" else int(devices)
    if n > len(available):
        raise UsageError(
            f"run.devices = {devices}, but this process has {len(available)} {available[0].platform} device(s); "
            f"use at most {len(available)} (or --cpu-devices N for host devices)"
        )
    if n == 1:
        if shard_params:
            raise UsageError("run.shard_params = true needs several devices (run.devices = all or N > 1)")
        return Layout()
    if batch_size % n:
        raise UsageError(
            f"run.batch_size = {batch_size} does not divide over {n} devices (run.devices = {devices}); "
            f"use a multiple of {n}, e.g. {batch_size + n - batch_size % n}"
        )
    mesh = jax.make_mesh((n,), (AXIS,), devices=available[:n], axis_types=(jax.sharding.AxisType.Auto,))
    return Layout(mesh, shard_params)

"""``jaxyard check``: what a configuration costs before any of it is spent.

Builds the model and optimizer as shapes only (``nnx.eval_shape``: nothing allocated), checks the
combination as ``run`` would (the same one-line errors), and compiles one training step ahead of
time for the chosen layout: its FLOPs (XLA's cost analysis) and its memory per device (XLA's
memory analysis), plus the data an in-memory loader keeps on each device.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxyard.core.registry.config import RunConfig
from jaxyard.core.scale.layout import make_layout
from jaxyard.core.train import steps
from jaxyard.core.train.build import abstract_rows, check_fit, load_data, make_schedule, make_task, make_tx, task_context, train_example
from jaxyard.core.train.data import Dataset, as_batch
from jaxyard.core.train.initialise import available_memory, check_memory, create_model, model_rngs
from jaxyard.core.train.loop import compiling


def check(config: RunConfig, *, memory_limit: int | None = None) -> dict[str, Any]:
    """The cost of one training step of ``config`` on its layout; ``fits`` compares the memory
    per device with ``memory_limit`` bytes (default: what the device has available)."""
    run = config.run
    layout = make_layout(run.devices, run.shard_params, run.batch_size)
    task = make_task(config)
    data, steps_per_epoch = load_data(config)
    example = train_example(config, data)
    context = task_context(config, task, data, example)

    def create():
        model = create_model(config, context, model_rngs(0, task))
        schedule = make_schedule(config, steps_per_epoch, check=False)[0]
        return model, nnx.Optimizer(model, make_tx(config, schedule, task), wrt=nnx.Param)

    check_memory(config, nnx.eval_shape(lambda: create_model(config, context, model_rngs(0, task))))
    model, optimizer = nnx.eval_shape(create)
    check_fit(config, model, data, task=task, context=context, example=example)
    graphdef, state = steps.split(model, optimizer)
    params = nnx.state(model, nnx.Param)
    param_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    param_bytes = _bytes(params)
    optimizer_bytes = _bytes(nnx.state(optimizer))  # its moments and step count (the parameters are the model's)

    shardings = layout.state_shardings(state) if layout.mesh is not None else jax.tree.map(lambda _: None, state)
    abstract_state = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), state, shardings)
    batch_sharding = layout.batch if layout.mesh is not None else None
    bs = run.batch_size
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sharding), abstract_rows(data, context, bs, example))
    mask = jax.ShapeDtypeStruct((bs,), jnp.float32, sharding=batch_sharding)
    step = steps.make_train_step(graphdef, None, layout, state, task=lambda inputs: task)

    t0 = time.perf_counter()
    compiled = compiling(SimpleNamespace(config=config), lambda: step.lower(abstract_state, {}, batch, mask).compile())
    compile_seconds = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    step_bytes = None
    if memory is not None:
        step_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                      + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    data_bytes = 0
    if isinstance(data, Dataset):  # kept on every device (replicated), as run puts it; over a job, a block on each
        data_bytes = sum(_canonical_bytes(a) for s in (data.train, data.val, data.test) for a in jax.tree.leaves(as_batch(s)))
        if layout.processes > 1:
            data_bytes = -(-data_bytes // layout.devices)
    free, where = available_memory()
    limit = memory_limit if memory_limit is not None else free
    need = (step_bytes or 0) + data_bytes
    return {
        "model": config.model.name,
        "optimizer": config.optimizer.name,
        "layout": layout.describe(),
        "devices": layout.devices,
        "batch_size": bs,
        "parameters": param_count,
        "parameter_bytes": param_bytes,
        "optimizer_state_bytes": optimizer_bytes,
        "flops_per_step_per_device": float(cost.get("flops", 0.0)) if cost else None,  # XLA's per-device (SPMD) program
        "step_memory_per_device_bytes": step_bytes,
        "data_per_device_bytes": data_bytes,
        "memory_per_device_bytes": need,
        "memory_limit_bytes": limit,
        "memory_limit_source": "--memory-limit" if memory_limit is not None else where,
        "fits": None if limit is None else need <= limit,
        "compile_seconds": round(compile_seconds, 3),
        "steps_per_epoch": steps_per_epoch,
    }


def _canonical_bytes(array) -> int:
    """Bytes of ``array`` as the device holds it (64-bit values as 32-bit)."""
    array = np.asarray(array)
    return array.size * np.dtype(jax.dtypes.canonicalize_dtype(array.dtype)).itemsize


def _bytes(tree) -> int:
    return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
               if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))

"""Training state as a flat dict of named arrays, the form checkpointers save and restore."""

from __future__ import annotations

import jax
import numpy as np

from jaxyard.core.scale.processes import host_copy
from jaxyard.core.store.checkpoint import CheckpointMismatch, compare_structures, structure_of


def flatten(state, *, keep: bool = True) -> dict[str, np.ndarray]:
    """``{"model.hidden.0.kernel": array, ...}``: host copies, RNG keys as their uint32 key data.

    Over a job, an array sharded across processes is gathered: every process calls this; those
    that do not save (``keep=False``) only take part in the gathering and get ``{}``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        copy = host_copy(leaf, needed=keep)  # a copy: the device buffer is donated next step
        if keep:
            out[_name(path)] = copy
    return out


def shapes(state) -> dict[str, tuple[tuple[int, ...], object]]:
    """``{name: (shape, dtype)}`` as :func:`flatten` would name and store it, without copying."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        out[_name(path)] = (tuple(leaf.shape), leaf.dtype)
    return out


def unflatten(template, arrays: dict[str, np.ndarray], *, step: int | None = None):
    """Put ``arrays`` into the structure of ``template``; a differing structure names each path."""
    differences = compare_structures(shapes(template), structure_of(arrays))
    if differences:
        raise CheckpointMismatch(differences, step=step)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    new = []
    for path, leaf in leaves:
        value = jax.numpy.asarray(arrays[_name(path)])
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
        new.append(value)
    return jax.tree_util.tree_unflatten(treedef, new)


def _name(path) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
            continue
        part = getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
        parts.append(str(part))
    return ".".join(parts)  # "model.hidden.0.kernel": the state is split from {"model": ..., "optimizer": ...}

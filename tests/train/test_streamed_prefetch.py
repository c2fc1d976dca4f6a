"""Streamed batches copied to the device ahead of their step (an accelerator's double buffering)
train exactly what batches handed to the step as NumPy arrays train."""

import jax
import numpy as np

import jaxyard

from helpers import LOCAL


def test_batches_put_on_the_device_ahead_train_the_same_numbers():
    """The device copy (on by default off the CPU backend, forced here) changes no number: an epoch's
    sums and the state after it are bit-identical."""
    from jaxyard.core.store.state import flatten, unflatten
    from jaxyard.core.train.build import build
    from jaxyard.core.train.loop import make_loop

    registry = jaxyard.build_registry(plugins=[str(LOCAL / "streams.py")], strict=True)
    options = {"task": "regression", "loader": "stream-of", "epochs": 1, "batch_size": 16}
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options,
                                    sets=["run.checkpointer=none", "model.hidden_dims=16", "loader.source=regression"])
    built = build(config)
    start = flatten(built.state)
    results = []
    for to_device in (False, True):  # one build, the same start
        built.state = built.layout.place_state(unflatten(built.state, start))
        loop = make_loop(built)
        loop.to_device = to_device
        sums = jax.device_get(loop.train_epoch(1))
        results.append((sums, flatten(built.state)))
    (sums, state), (put_sums, put_state) = results
    assert sums.keys() == put_sums.keys() and all(np.array_equal(sums[k], put_sums[k]) for k in sums)
    assert state.keys() == put_state.keys()
    for key in state:
        np.testing.assert_array_equal(state[key], put_state[key], err_msg=key)

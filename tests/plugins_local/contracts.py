"""Components that break (or stretch) their contracts, one way each, for the contract tests."""

import attrs

import jaxyard


@attrs.frozen
class NoParams:
    pass


@attrs.frozen
class StreamFault:
    fault: str = jaxyard.param("none", "what is wrong with the batches: none, shape, labels, nan")


def keep_params(p, *, learning_rate):
    """SGD that keeps the initial parameters themselves in its state (legal optax)."""
    import optax

    def init(params):
        return {"anchor": params}

    return optax.chain(optax.GradientTransformation(init, lambda u, s, params=None: (u, s)), optax.sgd(learning_rate))


def sam(p, *, learning_rate):
    """optax.contrib.sam around SGD (its state holds parameter copies)."""
    import optax
    from optax import contrib

    return contrib.sam(optax.sgd(learning_rate), optax.sgd(0.05), sync_period=2)


def uncalled(p, *, learning_rate):
    """Returns optax.adam itself instead of calling it."""
    import optax

    return optax.adam


def raises(p, *, learning_rate):
    """Refuses with the plugin's own friendly error."""
    raise ValueError("this optimizer needs run.clip_norm > 0")


def lookahead(p, *, learning_rate):
    """optax.lookahead, which wants LookaheadParams, not the plain parameters nnx hands it."""
    import optax

    return optax.lookahead(optax.sgd(learning_rate), sync_period=2, slow_step_size=0.5)


def float_schedule(p, *, learning_rate, decay_steps):
    """Returns a number, not a schedule."""
    return 0.1


def nan_schedule(p, *, learning_rate, decay_steps):
    """A schedule that is NaN."""
    return lambda step: learning_rate * float("nan")


def stream(p: StreamFault, *, seed):
    """Four classes of 8 features, streamed; with a fault in every batch."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def batches(split, batch_size, epoch):
        for _ in range(3):
            x = rng.normal(size=(batch_size, 8)).astype(np.float32)
            y = rng.integers(0, 4, batch_size).astype(np.int32)
            if p.fault == "shape":
                x = x[:, :5]
            elif p.fault == "labels":
                y[2] = 7
            elif p.fault == "nan":
                x[1, 3] = np.nan
            yield x, y

    return jaxyard.StreamingDataset(batches, (8,), 4, sizes={"train": 48, "val": None, "test": None})


def raising_model(p, *, input_shape, num_classes, rngs):
    """Fails to build."""
    raise RuntimeError("no GPU kernel for this layer")


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    for name, factory in (("keep-params", keep_params), ("sam", sam), ("uncalled", uncalled), ("raises", raises), ("lookahead", lookahead)):
        register(name, factory, params=NoParams)


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    register("float-schedule", float_schedule, params=NoParams)
    register("nan-schedule", nan_schedule, params=NoParams)


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register("faulty-stream", stream, params=StreamFault)


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("raising", raising_model, params=NoParams)

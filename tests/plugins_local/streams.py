"""A local test plugin: the built-in token and regression data, streamed batch by batch from
Python (dict batches, float targets), so the streamed path trains any task's pytrees."""

import attrs

from jaxyard import StreamingDataset, hookimpl, param


@attrs.frozen
class StreamParams:
    source: str = param("tokens", "the built-in loader streamed: tokens or regression")


def stream_of(p, *, seed):
    """A built-in loader's splits, yielded in shuffled batches (the train split by epoch)."""
    import numpy as np

    from jaxyard.core.train.data import as_batch
    from jaxyard.plugins import loaders

    if p.source == "tokens":
        data = loaders.tokens(loaders.TokensParams(train_size=90, val_size=30, test_size=30, seq_len=8), seed=seed)
    else:
        data = loaders.regression(loaders.RegressionParams(train_size=90, val_size=30, test_size=30), seed=seed)
    splits = {s: as_batch(getattr(data, s)) for s in ("train", "val", "test")}

    def batches(split, batch_size, epoch):
        import jax

        part = splits[split]
        n = len(jax.tree.leaves(part)[0])
        order = np.random.default_rng([seed, epoch]).permutation(n) if split == "train" else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield jax.tree.map(lambda a, idx=idx: np.asarray(a)[idx], part)

    return StreamingDataset(batches, data.input_shape, data.num_classes, sizes={s: 90 if s == "train" else 30 for s in splits})


@hookimpl
def jaxyard_register_loaders(register):
    register("stream-of", stream_of, params=StreamParams)

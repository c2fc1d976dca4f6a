"""Data through grain (``pip install 'jaxyard[grain]'``): the ``grain`` loader, and
:func:`grain_stream` for a plugin's own grain data sources.

Both give a resumable :class:`jaxyard.StreamingDataset`: each split a ``grain.MapDataset``
(shuffled by the run's seed and the epoch for train: ``MapDataset.shuffle`` for a data source, a
NumPy permutation gathered a batch at a time for the loader's in-memory arrays), batched, read in this process or by
``worker_count`` grain worker processes, its iterator's position (``get_state``) kept in every
checkpoint, so a run may validate every ``run.eval_every`` batches and resume mid-epoch.

Neither grain nor jax is imported here until a loader is built: listing stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import attrs
from attrs import validators as v

from jaxyard import MissingExtra, StreamingDataset, UsageError, hookimpl, param
from jaxyard.plugins.loaders import NpzParams, _existing, npz

__all__ = ["GrainParams", "grain", "grain_stream"]

SPLITS = ("train", "val", "test")


def _workers_param():
    return param(0, "grain worker processes reading the training batches; 0: read in this process", validator=[v.ge(0), v.le(256)])


def _prefetch_param():
    return param(2, "batches read ahead by a background thread (per worker process with workers); 0: none", validator=[v.ge(0), v.le(1024)])


@attrs.frozen
class GrainParams(NpzParams):
    """The npz loader's parameters (the same file conventions), and how grain reads the batches."""

    worker_count: int = _workers_param()
    prefetch: int = _prefetch_param()


def grain(p: GrainParams, *, seed):
    """An .npz file's arrays, streamed by grain: shuffled by seed and epoch, resumable mid-epoch (pip install 'jaxyard[grain]')."""
    _import_grain("loader 'grain'")
    _existing(p.path, "grain")
    try:
        data = npz(NpzParams(**{f.name: getattr(p, f.name) for f in attrs.fields(NpzParams)}), seed=seed)
    except UsageError as err:  # the npz loader's checks, named as this loader's
        raise UsageError(str(err).replace("loader 'npz'", "loader 'grain'", 1)) from None
    from jaxyard.core.train.data import as_batch

    splits = {s: _Rows(as_batch(getattr(data, s))) for s in SPLITS}
    return grain_stream(splits, seed=seed, input_shape=data.input_shape, num_classes=data.num_classes,
                        worker_count=p.worker_count, prefetch=p.prefetch)


@attrs.frozen
class _Rows:
    """Arrays sharing their leading axis, read a batch at a time: batch ``b`` of an epoch's row
    ``order`` is one NumPy take of those rows (grain's per-example shuffle and stacking cost about
    25 us an example: most of a small model's epoch)."""

    arrays: Any

    def __len__(self) -> int:
        import jax

        return len(jax.tree.leaves(self.arrays)[0])

    def take(self, order, batch_size: int, b: int):
        import jax
        import numpy as np

        rows = order[b * batch_size:(b + 1) * batch_size]
        return jax.tree.map(lambda a: np.asarray(a)[rows], self.arrays)


def grain_stream(
    splits: Mapping[str, Any],
    *,
    seed: int,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    worker_count: int = 0,
    prefetch: int = 2,
    shuffle: bool = True,
) -> StreamingDataset:
    """A resumable :class:`jaxyard.StreamingDataset` over grain data, for a loader plugin's factory.

    :param splits: ``"train"``, ``"val"`` and ``"test"``, each a ``grain.MapDataset`` or a
        random-access data source (``__len__`` and ``__getitem__``, as ``grain.sources``' are) whose
        items are examples: pytrees of arrays such as ``(x, y)`` or ``{"tokens": ...}``. Batches
        stack them along a new first axis.
    :param seed: the run's seed (the factory's ``seed``): the training split is shuffled by it and
        the epoch, the same on every run with that seed.
    :param input_shape: one example's features' shape; default: read from the first train example.
    :param num_classes: the number of classes (or a vocabulary's size), None where it means nothing.
    :param worker_count: grain worker processes reading the training batches (0: this process).
        A worker process imports the data source by reference: define it in an importable module.
    :param prefetch: batches a background thread reads ahead (0: read when asked).
    :param shuffle: shuffle the training split each epoch.

    The training iterator's ``get_state()`` is grain's (JSON): checkpoints keep it, and ``resume``
    continues from the next batch. Example, in a plugin module::

        @jaxyard.hookimpl
        def jaxyard_register_loaders(register):
            register("my-data", my_data, params=MyParams)

        def my_data(p, *, seed):
            from jaxyard.plugins.grain_loader import grain_stream
            return grain_stream({s: MySource(p.root, s) for s in ("train", "val", "test")}, seed=seed, num_classes=10)
    """
    _import_grain("grain_stream")
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise UsageError(f"grain_stream: splits has no {', '.join(missing)} (it holds {', '.join(map(str, splits)) or 'nothing'}); "
                         f"give train, val and test")
    sizes = {s: len(splits[s]) for s in SPLITS}
    empty = [s for s in SPLITS if not sizes[s]]
    if empty:
        raise UsageError(f"grain_stream: the {', '.join(empty)} split has no examples; every split needs at least one")
    if input_shape is None:
        input_shape = _example_shape(splits["train"])

    def batches(split: str, batch_size: int, epoch: int):
        import grain as gr

        source = splits[split]
        if isinstance(source, _Rows):  # arrays in memory: a batch's rows gathered at once, in an order drawn by NumPy
            import numpy as np

            n = len(source)
            order = np.random.default_rng([seed, epoch]).permutation(n) if split == "train" and shuffle else np.arange(n)
            ds = gr.MapDataset.range(-(-n // batch_size)).map(partial(source.take, order, batch_size))
        else:
            ds = source if isinstance(source, gr.MapDataset) else gr.MapDataset.source(source)
            if split == "train" and shuffle:
                ds = ds.shuffle(seed=epoch_seed(seed, epoch))
            ds = ds.batch(batch_size)
        stream = ds.to_iter_dataset(gr.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch))
        if worker_count and split == "train" and epoch > 0:  # (epoch 0: the engine's check of the first batch, read here)
            _flags_parsed()
            stream = stream.mp_prefetch(gr.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=max(prefetch, 1)))
        return iter(stream)

    return StreamingDataset(batches, tuple(input_shape), num_classes, sizes=sizes, resumable=True)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of ``epoch`` of a run seeded ``seed`` (a 32-bit integer, as grain takes)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _example_shape(source) -> tuple[int, ...]:
    """One example's features' shape: ``x`` of an ``(x, y)`` pair or an ``{"x": ...}`` dict, else
    ``tokens`` or the first leaf."""
    import numpy as np

    from jaxyard.core.train.data import input_shape_of

    if isinstance(source, _Rows):
        import jax

        return input_shape_of(jax.tree.map(np.asarray, source.arrays))
    import jax

    return input_shape_of(jax.tree.map(lambda a: np.asarray(a)[None], source[0]))


def _import_grain(what: str):
    try:
        import grain as gr
    except ImportError:
        raise MissingExtra(what, "grain", "grain") from None
    return gr


def _flags_parsed() -> None:
    """grain's worker processes read absl flags, which a program that never parsed them (jaxyard's
    CLI, a notebook) has at their defaults: marked parsed, as they are."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@hookimpl
def jaxyard_register_loaders(register):
    register("grain", grain, params=GrainParams)

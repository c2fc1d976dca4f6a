"""What a loader returns: data held in memory, or a stream of batches (and the check of data in memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import jax
    import numpy as np

SPLITS = ("train", "val", "test")


@attrs.frozen
class Split:
    """One split: features ``x`` of shape ``(n, *input_shape)`` and targets ``y`` (for the default
    classification task, integer labels of shape ``(n,)``). A batch of it is the pair ``(x, y)``.

    A loader returns NumPy arrays; the engine's copy holds the same data as device (jax) arrays.
    """

    x: np.ndarray | jax.Array
    y: np.ndarray | jax.Array

    def __len__(self) -> int:
        return len(self.y)


#: a split: a :class:`Split`, or any pytree of arrays sharing their leading (row) axis, such as
#: ``{"tokens": int32 (n, T)}``: what the task's loss receives, a batch of rows at a time
SplitData = Any


def as_batch(split: SplitData) -> Any:
    """The pytree a task sees for ``split``: ``(x, y)`` for a :class:`Split`, else the split itself."""
    return (split.x, split.y) if isinstance(split, Split) else split


def num_rows(split: SplitData) -> int:
    """The rows of a split (its leaves' leading axis)."""
    import jax

    leaves = jax.tree.leaves(as_batch(split))
    return len(leaves[0]) if leaves else 0


def input_shape_of(batch: Any) -> tuple[int, ...]:
    """One example's shape of a batch's features (``x``; ``tokens`` or the first leaf of a dict without one)."""
    from collections.abc import Mapping

    import jax

    if isinstance(batch, Mapping) and "x" not in batch:
        leaf = batch["tokens"] if "tokens" in batch else jax.tree.leaves(batch)[0]
    elif isinstance(batch, Mapping):
        leaf = batch["x"]
    else:
        leaf = batch[0]
    return tuple(leaf.shape[1:])


@attrs.frozen
class Dataset:
    """An in-memory data set: the engine puts it on the device and scans whole epochs.

    Each split is a :class:`Split` or a pytree of arrays with one row per example (a dict).
    ``val`` may be None (``Dataset(train, None, test)``): the engine then carves a validation split
    out of train, ``run.val_fraction`` of its rows chosen by a fixed seed (the same for every
    ``run.seed``), and the report says so. ``num_classes``: the number of classes (or a
    vocabulary's size), for the tasks that read it; None where it means nothing (regression).
    """

    train: SplitData
    val: SplitData | None
    test: SplitData
    num_classes: int | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input_shape_of("train")

    def input_shape_of(self, split: str) -> tuple[int, ...]:
        return input_shape_of(as_batch(getattr(self, split)))

    def sizes(self) -> dict[str, int]:
        """Rows per split (a missing val split: 0)."""
        return {s: num_rows(getattr(self, s)) for s in SPLITS}


@attrs.frozen
class StreamingDataset:
    """Batches produced in Python, for data that does not fit in memory.

    ``batches(split, batch_size, epoch)`` yields ``(x, y)`` NumPy batches (or dicts of arrays) of at most
    ``batch_size`` examples; for ``"train"`` it should shuffle by ``epoch`` so that a run is
    reproducible. ``sizes`` gives the number of examples per split when known (None if not).

    In a job of several processes every process calls ``batches`` and keeps its rows of each
    batch: the batches must be the same on every process (a different count leaves a process
    waiting for a step the others never take).

    ``resumable``: the stream reports and restores its position, so a run may train in rounds of
    ``run.eval_every`` batches (and ``run.steps``), validating and checkpointing mid-epoch, and
    ``resume`` continues from the exact next batch. The iterator ``iter(batches("train", batch_size,
    epoch))`` then has two methods (grain's ``DatasetIterator`` has both):

    - ``get_state()``: its position after the batches drawn so far, a JSON-able value (or UTF-8
      bytes of JSON, as grain's ``DataLoader`` gives), saved in every checkpoint's meta as
      ``{"stream": {"epoch": E, "state": ...}}`` (JSON, never pickled);
    - ``set_state(state)``: on a fresh iterator of the same split, batch size and epoch, continue
      from the batch after that position.

    A stream that is not resumable (the default: a generator cannot do this) trains and validates
    in whole epochs; ``run.steps`` and ``run.eval_every`` are refused for it.
    :func:`jaxyard.plugins.grain_loader.grain_stream` makes a resumable one from grain data sources.
    """

    batches: Callable[[str, int, int], Iterable[Any]]
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    sizes_: dict[str, int | None] = attrs.field(factory=dict, alias="sizes")
    resumable: bool = attrs.field(default=False, kw_only=True)

    def sizes(self) -> dict[str, int | None]:
        return {s: self.sizes_.get(s) for s in SPLITS}


def close_stream(batches) -> None:
    """Let go of a streamed loader's iterator (its ``close()``, if it has one: a generator's, a grain
    iterator's worker processes); an error closing it is not the run's."""
    close = getattr(batches, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: S110 - the batches were read; closing is best effort
            pass


def check_splits(loader: str, data: Dataset) -> None:
    """An in-memory data set as the engine needs it (checked when loaded, before anything is built):
    splits whose arrays agree on their rows, at least one row each, examples of one shape, finite
    float features (the targets are the task's to check)."""
    import jax
    import numpy as np

    from jaxyard.core.errors import UsageError
    from jaxyard.core.task import features

    for split in SPLITS:
        batch = as_batch(getattr(data, split))
        leaves = jax.tree.leaves(batch)
        rows = {len(np.asarray(a)) if np.ndim(a) else 0 for a in leaves}
        if len(rows) != 1 or 0 in rows:
            shapes = ", ".join(str(np.shape(a)) for a in leaves)
            raise UsageError(f"loader {loader!r}: the {split} split has arrays of shapes {shapes}; each needs one row per example, and at least one")
        shape = tuple(data.input_shape) if split != "train" else None
        if shape is not None and data.input_shape_of(split) != shape:
            raise UsageError(f"loader {loader!r}: {split} examples have shape {data.input_shape_of(split)}, train examples {shape}")
        try:
            x = np.asarray(features(batch))
        except (KeyError, IndexError, TypeError):
            continue
        refuse_non_finite(x, f"loader {loader!r}: {split}")


def refuse_non_finite(x, where: str) -> None:
    """A UsageError naming the first example (row) of ``x`` with a non-finite float feature, if any:
    ``"{where} example 3 has a non-finite feature (nan)"``."""
    import numpy as np

    from jaxyard.core.errors import UsageError

    if not np.issubdtype(x.dtype, np.floating):
        return
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise UsageError(f"{where} example {row} has a non-finite feature ({x[row][~finite[row]].flat[0]})")

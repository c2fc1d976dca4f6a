"""What a loader returns: data held in memory, or a stream of batches."""

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
    """One split: features ``x`` of shape ``(n, *input_shape)`` and integer labels ``y`` of shape ``(n,)``.

    A loader returns NumPy arrays; the engine's copy holds the same data as device (jax) arrays.
    """

    x: np.ndarray | jax.Array
    y: np.ndarray | jax.Array

    def __len__(self) -> int:
        return len(self.y)


@attrs.frozen
class Dataset:
    """An in-memory data set: the engine puts it on the device and scans whole epochs."""

    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}


@attrs.frozen
class StreamingDataset:
    """Batches produced in Python, for data that does not fit in memory.

    ``batches(split, batch_size, epoch)`` yields ``(x, y)`` NumPy batches of at most
    ``batch_size`` examples; for ``"train"`` it should shuffle by ``epoch`` so that a run is
    reproducible. ``sizes`` gives the number of examples per split when known (None if not).

    In a job of several processes every process calls ``batches`` and keeps its rows of each
    batch: the batches must be the same on every process (a different count leaves a process
    waiting for a step the others never take).
    """

    batches: Callable[[str, int, int], Iterable[tuple[Any, Any]]]
    input_shape: tuple[int, ...]
    num_classes: int
    sizes_: dict[str, int | None] = attrs.field(factory=dict, alias="sizes")

    def sizes(self) -> dict[str, int | None]:
        return {s: self.sizes_.get(s) for s in SPLITS}

"""A validation split carved from train, for a loader that gives none (``Dataset(train, None, test)``).

``run.val_fraction`` of the training rows (rounded, at least one) become the val split, the rest
stay train in their order. The rows are chosen by :data:`CARVE_SEED`, not by ``run.seed``: a
loader gives the same data for every run seed (resume, sweeps and the kit rely on it), so its
carve does too. The carved data set's ``sizes()`` holds ``val_carved`` (the rows carved), which
the report states.
"""

from __future__ import annotations

from typing import Any

import attrs
import jax
import numpy as np

from jaxyard.core.errors import UsageError
from jaxyard.core.train.data import Dataset, Split, StreamingDataset, as_batch

#: seeds the choice of the carved rows (fixed: the same for every run.seed)
CARVE_SEED = 0


@attrs.frozen
class CarvedDataset(Dataset):
    """A :class:`Dataset` whose val split the engine carved from the loader's train split."""

    carved: int = attrs.field(default=0, kw_only=True)

    def sizes(self) -> dict[str, int]:
        return {**super().sizes(), "val_carved": self.carved}


def carve_validation(config, data):
    """``data`` with a val split: the loader's own, else ``run.val_fraction`` of train (refused
    in one line when that is 0, or leaves no training row). A streamed loader must stream its
    own (its sizes' val 0 is refused: a carve needs the rows in memory)."""
    name, fraction = config.loader.name, config.run.val_fraction
    if isinstance(data, StreamingDataset):
        if data.sizes()["val"] == 0:
            raise UsageError(f"loader {name!r} streams no validation split (sizes val = 0), and one cannot be carved from a "
                             "stream; give its StreamingDataset a val split, or load the data in memory (a Dataset)")
        return data
    if not isinstance(data, Dataset) or data.val is not None:
        return data
    if not fraction:
        raise UsageError(f"loader {name!r} gives no validation split and run.val_fraction = 0; set run.val_fraction to the "
                         "share of the training split to carve one from, e.g. --set run.val_fraction=0.1")
    rows = {len(a) if np.ndim(a) else 0 for a in map(np.asarray, jax.tree.leaves(as_batch(data.train)))}
    if len(rows) != 1:
        return data  # arrays that disagree on their rows: the loader's train split is refused next, by its check
    n = rows.pop()
    carved = max(1, round(n * fraction))
    if n - carved < 1:
        raise UsageError(f"loader {name!r} gives no validation split, and its {n} training example{'s' * (n != 1)} cannot "
                         f"spare run.val_fraction = {fraction:g} of them for one; give it more rows or a val split")
    order = np.random.default_rng(CARVE_SEED).permutation(n)
    val_rows, train_rows = np.sort(order[:carved]), np.sort(order[carved:])
    return CarvedDataset(_rows(data.train, train_rows), _rows(data.train, val_rows), data.test, data.num_classes, carved=carved)


def _rows(split: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of a split (a :class:`Split` or a pytree of arrays), as NumPy arrays."""
    if isinstance(split, Split):
        return Split(np.asarray(split.x)[index], np.asarray(split.y)[index])
    return jax.tree.map(lambda a: np.asarray(a)[index], split)

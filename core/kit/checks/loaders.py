"""Loader checks: a Dataset or StreamingDataset with non-empty splits, labels in range, finite
features, and the same data for the same seed (and for any run seed)."""

from __future__ import annotations

from typing import Any

from jaxyard.core.kit.harness import CheckSkipped, Failure, Subject, define_check


def _load(s: Subject, seed: int = 0):
    from jaxyard.core.train.data import Dataset, StreamingDataset

    data = s.create(seed=seed)
    if not isinstance(data, (Dataset, StreamingDataset)):
        raise Failure(f"the factory returned {type(data).__name__}, not a jaxyard.Dataset or StreamingDataset",
                      "return jaxyard.Dataset(train, val, test, num_classes) or a jaxyard.StreamingDataset")
    return data


def _splits(data, batch_size: int = 4) -> dict[str, tuple[Any, Any]]:
    """Each split's arrays (a Dataset) or first batch (a StreamingDataset), as NumPy."""
    import numpy as np

    from jaxyard.core.train.data import SPLITS, Dataset

    out = {}
    for split in SPLITS:
        if isinstance(data, Dataset):
            part = getattr(data, split)
            out[split] = (np.asarray(part.x), np.asarray(part.y))
        else:
            first = next(iter(data.batches(split, batch_size, 0)), None)
            if first is None:
                raise Failure(f"batches({split!r}, {batch_size}, 0) yields nothing", "yield at least one batch per split")
            out[split] = (np.asarray(first[0]), np.asarray(first[1]))
    return out


@define_check("loader")
def check_returns_dataset(s: Subject) -> str:
    """factory(params, seed) returns a jaxyard.Dataset or StreamingDataset with num_classes >= 2."""
    data = _load(s)
    if isinstance(data.num_classes, bool) or not isinstance(data.num_classes, int) or data.num_classes < 2:
        raise Failure(f"num_classes is {data.num_classes!r}", "give the number of classes as an int >= 2")
    return f"{type(data).__name__}: sizes {data.sizes()}, input_shape {tuple(data.input_shape)}, {data.num_classes} classes"


@define_check("loader")
def check_splits_nonempty(s: Subject) -> None:
    """The three splits are non-empty, with one label per example and the same example shape (a stream gives the train size)."""
    from jaxyard.core.train.data import Dataset

    data = _load(s)
    parts = _splits(data)
    if not isinstance(data, Dataset):
        train = data.sizes().get("train")
        if not isinstance(train, int) or train < 1:
            raise Failure(f"sizes()['train'] is {train!r}", "pass sizes={'train': N, ...} to StreamingDataset: the engine needs the train size")
    for split, (x, y) in parts.items():
        if len(y) == 0 or len(x) != len(y) or y.ndim != 1:
            raise Failure(f"the {split} split has features {x.shape} and labels {y.shape}",
                          "give every split at least one example, features (n, *input_shape) and labels (n,)")
        if tuple(x.shape[1:]) != tuple(data.input_shape):
            raise Failure(f"the {split} examples have shape {x.shape[1:]}, but input_shape is {tuple(data.input_shape)}",
                          "give every split the same example shape")


@define_check("loader")
def check_labels_in_range(s: Subject) -> None:
    """Labels are integers in [0, num_classes)."""
    import numpy as np

    data = _load(s)
    for split, (_, y) in _splits(data).items():
        if not np.issubdtype(y.dtype, np.integer):
            raise Failure(f"the {split} labels have dtype {y.dtype}", "give labels an integer dtype (int32)")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
            raise Failure(f"the {split} labels range over {int(y.min())}..{int(y.max())}, outside 0..{data.num_classes - 1}",
                          "number the classes 0..num_classes-1, or raise num_classes")


@define_check("loader")
def check_features_finite(s: Subject) -> None:
    """Features are real numbers, all finite."""
    import numpy as np

    for split, (x, _) in _splits(_load(s)).items():
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise Failure(f"the {split} features have dtype {x.dtype}", "give features a real dtype (float32)")
        if not np.isfinite(x).all():
            raise Failure(f"the {split} split holds a non-finite feature", "drop or fix non-finite values in the loader")


@define_check("loader")
def check_same_seed_same_data(s: Subject) -> None:
    """Two loads with the same seed give bit-identical arrays (each split, or each first batch of a stream)."""
    import numpy as np

    a, b = _splits(_load(s)), _splits(_load(s))
    for split in a:
        for i, what in enumerate(("features", "labels")):
            if a[split][i].shape != b[split][i].shape or not np.array_equal(a[split][i], b[split][i], equal_nan=True):
                raise Failure(f"two loads with seed 0 give different {split} {what}",
                              "derive all randomness from the seed (and the loader's own seed parameters), never from global state or time")


@define_check("loader")
def check_same_data_for_any_run_seed(s: Subject) -> None:
    """An in-memory Dataset is the same for run seeds 0 and 1: the data and its split follow seeds of their own
    (a sweep over run.seed trains on the same data)."""
    import numpy as np

    from jaxyard.core.train.data import Dataset

    first = _load(s, seed=0)
    if not isinstance(first, Dataset):
        raise CheckSkipped("a StreamingDataset may order its batches by the run's seed")
    a, b = _splits(first), _splits(_load(s, seed=1))
    for split in a:
        if any(a[split][i].shape != b[split][i].shape or not np.array_equal(a[split][i], b[split][i], equal_nan=True) for i in (0, 1)):
            raise Failure(f"the {split} split differs between run seeds 0 and 1",
                          "draw the data and its split from parameters of the loader's own (data_seed, split_seed), not from `seed`")


@define_check("loader")
def check_stream_first_batch(s: Subject) -> str:
    """A StreamingDataset's first batch of each split has the declared input_shape and at most the requested size."""
    from jaxyard.core.train.data import StreamingDataset

    data = _load(s)
    if not isinstance(data, StreamingDataset):
        raise CheckSkipped("an in-memory Dataset: it has no batches to check")
    for requested in (1, 4):
        for split, (x, y) in _splits(data, requested).items():
            if not 1 <= len(x) <= requested or len(y) != len(x):
                raise Failure(f"the first {split} batch for batch_size {requested} has {len(x)} examples and {len(y)} labels",
                              "yield batches of at most batch_size examples, one label each")
            if tuple(x.shape[1:]) != tuple(data.input_shape):
                raise Failure(f"the first {split} batch has examples of shape {x.shape[1:]}, not input_shape {tuple(data.input_shape)}",
                              "declare the shape the batches have")
    return f"input_shape {tuple(data.input_shape)}"

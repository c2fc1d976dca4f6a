"""Loader checks: a Dataset or StreamingDataset with non-empty splits whose arrays agree on their
rows, finite values, data a task accepts, and the same data for the same seed (and for any run seed).

Which task: the kit's ``task=`` for the loader, else the first registered task whose ``context()``
and ``check()`` accept its data (classification first): integer labels, float targets and token
sequences each fit a built-in task.
"""

from __future__ import annotations

from typing import Any

from jaxyard.core.kit import examples
from jaxyard.core.kit.harness import CheckSkipped, Failure, Subject, define_check


def _load(s: Subject, seed: int = 0):
    from jaxyard.core.train.data import Dataset, StreamingDataset

    data = s.create(seed=seed)
    if not isinstance(data, (Dataset, StreamingDataset)):
        raise Failure(f"the factory returned {type(data).__name__}, not a jaxyard.Dataset or StreamingDataset",
                      "return jaxyard.Dataset(train, val, test, num_classes=None) or a jaxyard.StreamingDataset")
    return data


def _splits(data, batch_size: int = 4) -> dict[str, Any]:
    """Each split (a Dataset) or its first batch (a StreamingDataset) as the batch pytree a task sees, of NumPy arrays
    (a Dataset without a val split: train and test, the engine carves val from train)."""
    from jaxyard.core.train.data import SPLITS, Dataset

    out = {}
    for split in SPLITS:
        if isinstance(data, Dataset):
            if split == "val" and data.val is None:  # none: the engine carves one from train (run.val_fraction)
                continue
            out[split] = examples.host_batch(getattr(data, split))
        else:
            first = next(iter(data.batches(split, batch_size, 0)), None)
            if first is None:
                raise Failure(f"batches({split!r}, {batch_size}, 0) yields nothing", "yield at least one batch per split")
            out[split] = examples.host_batch(first)
    return out


def _leaves(batch) -> list[tuple[str, Any]]:
    """``(name, array)`` for each array of a batch (``x`` and ``y`` of a pair, else its key path)."""
    import jax
    import numpy as np

    if isinstance(batch, tuple) and len(batch) == 2 and all(hasattr(a, "shape") for a in batch):
        return [("x", np.asarray(batch[0])), ("y", np.asarray(batch[1]))]
    return [(jax.tree_util.keystr(path) or "the batch", np.asarray(leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]]


def _rows(split: str, batch) -> int:
    """The rows every array of a batch has (its leading axis); a Failure when they disagree."""
    leaves = _leaves(batch)
    if not leaves:
        raise Failure(f"the {split} split holds no arrays", "give each split arrays with one row per example: Split(x, y) or a dict")
    rows = {path: (int(a.shape[0]) if a.ndim else None) for path, a in leaves}
    counts = set(rows.values())
    if len(counts) != 1 or None in counts:
        raise Failure(f"the arrays of the {split} split have leading axes {rows}", "give every array of a split one row per example")
    return int(counts.pop() or 0)


def _same(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """None when two loads hold the same arrays bit for bit, else which split and array differ."""
    import numpy as np

    for split in a:
        la, lb = _leaves(a[split]), _leaves(b[split])
        if [p for p, _ in la] != [p for p, _ in lb]:
            return f"{split} (arrays {[p for p, _ in la]} vs {[p for p, _ in lb]})"
        for (path, x), (_, y) in zip(la, lb, strict=True):
            if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
                return f"{split} {path}"
    return None


@define_check("loader")
def check_returns_dataset(s: Subject) -> str:
    """factory(params, seed) returns a jaxyard.Dataset or StreamingDataset, num_classes None or a positive int."""
    data = _load(s)
    classes = data.num_classes
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise Failure(f"num_classes is {classes!r}", "give the number of classes (or a vocabulary's size) as an int, or None where it means nothing")
    return f"{type(data).__name__}: sizes {data.sizes()}, input_shape {tuple(data.input_shape)}, num_classes {classes}"


@define_check("loader")
def check_splits_nonempty(s: Subject) -> None:
    """The three splits are non-empty, their arrays agree on the rows, and the examples have input_shape (a stream gives the train size)."""
    from jaxyard.core.train.data import Dataset, input_shape_of

    data = _load(s)
    parts = _splits(data)
    if not isinstance(data, Dataset):
        train = data.sizes().get("train")
        if not isinstance(train, int) or train < 1:
            raise Failure(f"sizes()['train'] is {train!r}", "pass sizes={'train': N, ...} to StreamingDataset: the engine needs the train size")
    for split, batch in parts.items():
        if _rows(split, batch) == 0:
            raise Failure(f"the {split} split has no examples", "give every split at least one example")
        if tuple(input_shape_of(batch)) != tuple(data.input_shape):
            raise Failure(f"the {split} examples have shape {input_shape_of(batch)}, but input_shape is {tuple(data.input_shape)}",
                          "give every split the same example shape")


@define_check("loader")
def check_fits_a_task(s: Subject) -> str:
    """A task accepts its data (context() and check() of each split): the kit's task= for it, else the first registered
    task that does (classification first)."""
    data = _load(s)
    parts = _splits(data)
    registry = examples.registry_of(s)
    names = [s.options.task] if s.options.task else sorted(registry.names("task"), key=lambda n: (n != "classification", n))
    refusals = []
    for name in names:
        task = examples.task_named(s, name)
        try:
            context = dict(task.context(data, parts["train"]))
            for split, batch in parts.items():
                task.check(batch, f"the {split} split", context)
        except Exception as err:  # the task refuses it (a UsageError) or cannot read it: the next
            refusals.append(f"task {name!r}: {examples.refusal(err)}")
            continue
        return f"task {name}: {context}"
    raise Failure(f"no task accepts its data ({'; '.join(refusals) or 'no task is registered'})",
                  "give integer labels in 0..num_classes-1 (classification), float targets (regression) or the batches "
                  "the task it is for reads, and pass task={'loader:NAME': 'TASK'} to the kit")


@define_check("loader")
def check_features_finite(s: Subject) -> None:
    """Every array is numeric (float, integer or bool) and its values finite."""
    import numpy as np

    for split, batch in _splits(_load(s)).items():
        for path, a in _leaves(batch):
            if a.dtype.kind not in "fiub":
                raise Failure(f"the {split} split's {path} has dtype {a.dtype}", "give arrays a numeric dtype (float32, int32)")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise Failure(f"the {split} split's {path} holds a non-finite value", "drop or fix non-finite values in the loader")


@define_check("loader")
def check_same_seed_same_data(s: Subject) -> None:
    """Two loads with the same seed give bit-identical arrays (each split, or each first batch of a stream)."""
    diff = _same(_splits(_load(s)), _splits(_load(s)))
    if diff:
        raise Failure(f"two loads with seed 0 give different {diff}",
                      "derive all randomness from the seed (and the loader's own seed parameters), never from global state or time")


@define_check("loader")
def check_same_data_for_any_run_seed(s: Subject) -> None:
    """An in-memory Dataset is the same for run seeds 0 and 1: the data and its split follow seeds of their own
    (a sweep over run.seed trains on the same data)."""
    from jaxyard.core.train.data import Dataset

    first = _load(s, seed=0)
    if not isinstance(first, Dataset):
        raise CheckSkipped("a StreamingDataset may order its batches by the run's seed")
    diff = _same(_splits(first), _splits(_load(s, seed=1)))
    if diff:
        raise Failure(f"the {diff.split(' ', 1)[0]} split differs between run seeds 0 and 1 ({diff})",
                      "draw the data and its split from parameters of the loader's own (data_seed, split_seed), not from `seed`")


@define_check("loader")
def check_stream_first_batch(s: Subject) -> str:
    """A StreamingDataset's first batch of each split has the declared input_shape and at most the requested rows."""
    from jaxyard.core.train.data import StreamingDataset, input_shape_of

    data = _load(s)
    if not isinstance(data, StreamingDataset):
        raise CheckSkipped("an in-memory Dataset: it has no batches to check")
    for requested in (1, 4):
        for split, batch in _splits(data, requested).items():
            rows = _rows(split, batch)
            if not 1 <= rows <= requested:
                raise Failure(f"the first {split} batch for batch_size {requested} has {rows} examples",
                              "yield batches of at most batch_size examples, every array one row per example")
            if tuple(input_shape_of(batch)) != tuple(data.input_shape):
                raise Failure(f"the first {split} batch has examples of shape {input_shape_of(batch)}, not input_shape {tuple(data.input_shape)}",
                              "declare the shape the batches have")
    return f"input_shape {tuple(data.input_shape)}"

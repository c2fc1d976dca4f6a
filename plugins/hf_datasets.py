"""The `datasets` loader: local parquet, arrow, csv or json files, or a Hugging Face hub data set
from the local cache, read with Hugging Face datasets (pip install 'jaxyard[datasets]') into memory.

Offline unless ``download`` is on: the hub is not contacted, and nothing is written outside a
temporary folder that is removed once the data is in memory (datasets' arrow cache, its locks).
Neither datasets nor pyarrow is imported until the loader runs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import attrs
from attrs import validators as v

from jaxyard import Dataset, MissingExtra, Split, UsageError, hookimpl, param
from jaxyard.plugins.loaders import _classes_param, _features, _first_line, _fraction, _index_row, _labels, _split_seed

#: the files' formats, as datasets' packaged builders name them, by file extension
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json",
           ".jsonl": "json", ".ndjson": "json"}
_OFFLINE = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_SPLIT_KEYS = {"train": "train_split", "val": "val_split", "test": "test_split"}


@attrs.frozen
class DatasetsParams:
    path: str = param("", "local data: a file, a glob (data/*.parquet) or a directory of parquet, arrow, csv or json/jsonl "
                          "files; a file or a glob is one split (train), a directory's files named train*, validation*, "
                          "test* are those splits")
    format: str = param("", "the local files' format: parquet, arrow, csv or json (jsonl too); empty: from the extension",
                        validator=v.in_(("", *sorted(set(FORMATS.values())))))
    name: str = param("", "instead of path, a Hugging Face hub data set (mnist, user/name), read from the local cache "
                          "(HF_DATASETS_CACHE) unless download is on")
    config: str = param("", "the hub data set's configuration (subset); empty: its default")
    download: bool = param(False, "fetch a hub data set that is not in the local cache (connects to the Hugging Face hub)",
                           outside=True)
    train_split: str = param("train", "the split trained on")
    val_split: str = param("validation", "the validation split; empty, or left at the default and absent from the data: "
                                         "run.val_fraction of train is carved for it")
    test_split: str = param("test", "the test split; empty, or left at the default and absent from the data: "
                                    "test_fraction of train is held out for it")
    test_fraction: float = param(0.1, "share of train held out for testing when there is no test split",
                                 validator=_fraction)
    split_seed: int = _split_seed()
    features: str = param("", "column, or comma-separated columns, stacked into x (a list or array column gives its "
                              "values); empty: every numeric column but the label")
    label: str = param("label", "column of y: integers or strings are class labels (strings numbered in sorted order), "
                                "floats regression targets (class labels if classes is set)")
    columns: str = param("", "instead of features and label, batches of named arrays: key=column pairs, comma-separated "
                             "(tokens=input_ids,mask=attention_mask for next_token); integers stay int32, floats float32")
    classes: int = _classes_param()


def load(p: DatasetsParams, *, seed):
    """Parquet, arrow, csv or json files, or a cached Hugging Face hub data set, as arrays in memory.

    Features float32 (n, ...) stacked from the ``features`` columns and labels from ``label``
    (int32, with ``num_classes``; float32 targets for a float column), or with ``columns`` a dict of
    arrays per split. A split the data lacks is carved from train: val by ``run.val_fraction``,
    test by ``test_fraction``.
    """
    src = _source(p)
    mapping = _mapping(p, src)
    with _hub(online=p.download) as datasets:
        splits = _read(datasets, p, src)
        train = _split(splits, "train", p, src)
        val = _split(splits, "val", p, src)
        test = _split(splits, "test", p, src)
        names = _label_names(p, mapping, [s for s in (train, val, test) if s is not None])
        arrays = {key: None if s is None else _arrays(s, key, mapping, names, p, src) for key, s in
                  (("train", train), ("val", val), ("test", test))}
    if arrays["test"] is None:
        arrays["train"], arrays["test"] = _hold_out(arrays["train"], p, src)
    classes = _num_classes(p, mapping, names, [a for a in arrays.values() if a is not None])
    return Dataset(*(_as_split(arrays[s], p) for s in ("train", "val", "test")), classes)


# -- where the data comes from -------------------------------------------------------------------


def _source(p: DatasetsParams) -> str:
    if p.path and p.name:
        raise UsageError(f"loader 'datasets': path = {p.path!r} and name = {p.name!r} both given; set one: local files "
                         "(path) or a hub data set (name)")
    if p.name:
        return f"loader 'datasets': {p.name}" + (f" ({p.config})" if p.config else "")
    if not p.path:
        raise UsageError("loader 'datasets' needs data: --set loader.path=FILE (parquet, arrow, csv, json) or "
                         "--set loader.name=NAME (a hub data set in the local cache)")
    return f"loader 'datasets': {p.path}"


def _local_files(p: DatasetsParams, src: str) -> tuple[str, dict[str, Any]]:
    """The builder (format) and load_dataset's arguments for ``path``."""
    path = Path(p.path).expanduser()
    if path.is_dir():
        files = [f for f in sorted(path.rglob("*")) if f.is_file() and not any(s.startswith(".") for s in f.relative_to(path).parts)]
        kwargs: dict[str, Any] = {"data_dir": str(path)}
        if not files:
            raise UsageError(f"{src} is an empty directory; expected parquet, arrow, csv or json files in it")
    elif glob.has_magic(p.path):
        files = [Path(f) for f in sorted(glob.glob(str(path), recursive=True)) if Path(f).is_file()]
        kwargs = {"data_files": {"train": [str(f) for f in files]}}
        if not files:
            raise UsageError(f"{src} matches no file; check the pattern (quote it, so that the shell leaves it alone)")
    elif path.is_file():
        files, kwargs = [path], {"data_files": {"train": str(path)}}
    else:
        raise UsageError(f"{src}: no such file or directory")
    if p.format:
        return p.format, kwargs
    found = {FORMATS.get(f.suffix.lower()) for f in files} - {None}
    if len(found) != 1:
        what = "no parquet, arrow, csv or json file" if not found else f"files of several formats ({', '.join(sorted(found))})"
        suffixes = ", ".join(sorted({f.suffix or f.name for f in files})[:5])
        raise UsageError(f"{src} holds {what} (extensions: {suffixes}); set the format: --set "
                         "loader.format=parquet (or arrow, csv, json)")
    return found.pop(), kwargs


@contextlib.contextmanager
def _hub(*, online: bool):
    """The ``datasets`` module, offline unless ``online`` (its environment variables and the flags
    datasets and huggingface_hub read at import, restored after), quiet (no progress bars, no log)."""
    saved_env = {k: os.environ.get(k) for k in _OFFLINE}
    if not online:
        os.environ.update(dict.fromkeys(_OFFLINE, "1"))  # read when datasets is first imported
    try:
        try:
            import datasets
            import huggingface_hub.constants as hub
        except ImportError:
            raise MissingExtra("loader 'datasets'", "datasets", "datasets") from None
        flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"), (hub, "HF_HUB_OFFLINE")]
        saved_flags = [getattr(m, a) for m, a in flags]
        bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
        if not online:
            for m, a in flags:
                setattr(m, a, True)
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)  # a failed load logs before it raises
        try:
            yield datasets
        finally:
            for (m, a), value in zip(flags, saved_flags, strict=True):
                setattr(m, a, value)
            datasets.logging.set_verbosity(verbosity)
            if bars:
                datasets.enable_progress_bars()
    finally:
        for k, value in saved_env.items():
            if value is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = value


def _read(datasets, p: DatasetsParams, src: str):
    """Every split of the data, in memory (a DatasetDict). Local files and a cached data set are
    read through a temporary cache folder, removed after: nothing stays behind."""
    with tempfile.TemporaryDirectory(prefix="jaxyard-datasets-") as cache:
        try:
            if p.path:
                builder, kwargs = _local_files(p, src)
                return datasets.load_dataset(builder, keep_in_memory=True, cache_dir=cache, **kwargs)
            if p.download:  # the user's word: the hub and its cache, as datasets keeps them
                return datasets.load_dataset(p.name, p.config or None, keep_in_memory=True)
            _link_cached(datasets, p.name, cache)
            return datasets.load_dataset(p.name, p.config or None, keep_in_memory=True, cache_dir=cache)
        except UsageError:
            raise
        except ConnectionError as err:
            if p.download:
                raise UsageError(f"{src}: cannot download it: {_first_line(err)}") from None
            raise UsageError(f"{src} is not in the local cache ({datasets.config.HF_DATASETS_CACHE}); fetch it once with "
                             "--set loader.download=true") from None
        except FileNotFoundError as err:
            raise UsageError(f"{src}: no such file: {_first_line(err)}") from None
        except ValueError as err:
            empty = re.match(r'Instruction "(.*)" corresponds to no data', str(err))
            if empty:
                whole = empty[1] == "train" and p.path and not Path(p.path).is_dir()
                raise UsageError(f"{src}{' holds' if whole else f': its {empty[1]} split holds'} no rows; every split needs at least one example "
                                 "(a csv file: a row after its header)") from None
            raise UsageError(f"{src}: cannot read it: {type(err).__name__}: {_reason(err)}") from None
        except Exception as err:  # a file of another format, a truncated file, a missing data set: many kinds
            err = err.__cause__ if type(err).__name__ == "DatasetGenerationError" and err.__cause__ else err
            raise UsageError(f"{src}: cannot read it: {type(err).__name__}: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    """Why datasets could not read the files, in one line: for files whose columns differ (its
    CastError), the columns; else the message's first line, and its last where it has several
    (``Couldn't cast ... because column names don't match``)."""
    found, wanted = getattr(err, "table_column_names", None), getattr(err, "requested_column_names", None)
    if isinstance(found, list) and isinstance(wanted, list) and set(found) != set(wanted):
        extra, missing = [c for c in found if c not in wanted], [c for c in wanted if c not in found]
        differ = " and ".join(part for part in (extra and f"has {_columns(extra)}", missing and f"lacks {_columns(missing)}") if part)
        index = "; pandas writes its index as __index_level_0__, DataFrame.to_parquet(index=False) leaves it out" if any(
            str(c).startswith("__index_level_") for c in extra + missing) else ""
        return f"the files' columns differ: a file {differ}, unlike the first one read ({_names(wanted)}); every file needs the same columns{index}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1:
        return f"{lines[0]} ... {lines[-1]}"
    return _first_line(err)


def _columns(names: list) -> str:
    return f"column{'s' * (len(names) > 1)} {_names(names)}"


def _names(names: list, most: int = 10) -> str:
    """Comma-separated, the first ``most`` and how many more."""
    shown = ", ".join(map(str, names[:most]))
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _link_cached(datasets, name: str, cache: str) -> None:
    """Link the cached data set's folder into ``cache``: datasets then reads it from there, and puts
    its lock files in ``cache`` rather than in the user's cache."""
    folder = "___".join(name.split("/"))
    namespace, _, base = name.rpartition("/")
    candidates = {folder, "___".join([*([namespace] if namespace else []), _snake(base)])}
    for candidate in sorted(candidates):
        target = Path(datasets.config.HF_DATASETS_CACHE).expanduser() / candidate
        if target.is_dir() and not (Path(cache) / candidate).exists():
            (Path(cache) / candidate).symlink_to(target, target_is_directory=True)


def _snake(name: str) -> str:
    from datasets.naming import camelcase_to_snakecase

    return camelcase_to_snakecase(name)


# -- splits and columns --------------------------------------------------------------------------


def _split(splits, which: str, p: DatasetsParams, src: str):
    """The data's split for jaxyard's ``which`` (train, val, test), or None where it is carved."""
    key = _SPLIT_KEYS[which]
    name, default = getattr(p, key), attrs.fields_dict(DatasetsParams)[key].default
    if which != "train" and (not name or (name == default and name not in splits)):
        return None
    if name not in splits:
        fix = "" if which == "train" else ", or \"\" to carve it from train"
        raise UsageError(f"{src} has no split {name!r} (splits: {', '.join(splits)}); set loader.{key} to one of "
                         f"them{fix}")
    data = splits[name]
    if len(data) == 0:
        raise UsageError(f"{src}: the {which} split ({name!r}) has 0 rows; every split needs at least one")
    return data


def _mapping(p: DatasetsParams, src: str) -> dict[str, str]:
    """The batch's keys and their columns: ``{"x": ..., "y": label}`` (x from ``features``, "" for
    every numeric column), or the dict of ``columns``."""
    if not p.columns:
        if not p.label:
            raise UsageError(f"{src}: label is empty; name the column of y (--set loader.label=COLUMN), or give "
                             "dict batches with --set loader.columns=KEY=COLUMN,...")
        return {"x": p.features, "y": p.label}
    if p.features or p.label != "label":
        raise UsageError(f"{src}: columns = {p.columns!r} replaces features and label; leave those unset")
    mapping: dict[str, str] = {}
    for item in (s.strip() for s in p.columns.split(",")):
        key, _, column = (item.partition("=") if "=" in item else (item, "", item))
        key, column = key.strip(), column.strip()
        if not key or not column or key in mapping:
            raise UsageError(f"{src}: columns = {p.columns!r}: {item!r} is not KEY=COLUMN with a new KEY; expected "
                             "comma-separated pairs like tokens=input_ids,mask=attention_mask")
        mapping[key] = column
    return mapping


def _label_names(p: DatasetsParams, mapping: dict[str, str], splits) -> list | None:
    """The class names of y's column: a ClassLabel's names, or a string column's distinct values, sorted
    (each class's number: its index); None for a numeric column."""
    column = mapping.get("y") if not p.columns else None
    if column is None or column not in splits[0].column_names:
        return None
    feature = splits[0].features[column]
    if hasattr(feature, "names") and hasattr(feature, "num_classes"):  # a ClassLabel: the data set's own numbering
        return list(feature.names)
    if not _is_text(splits[0].data.schema.field(column).type):
        return None
    values: set = set()
    for s in splits:
        values.update(s.data.column(column).to_pylist())
    if None in values:
        raise UsageError(f"loader 'datasets': column {column!r} has missing values; every row needs a label")
    return sorted(values)


def _arrays(data, split: str, mapping: dict[str, str], names: list | None, p: DatasetsParams, src: str) -> dict:
    """One split's arrays by batch key: float32 features x and labels y (int32, or float32 targets),
    or the ``columns`` (integers int32, floats float32)."""
    import numpy as np

    out = {}
    for key, columns in _chosen(data, split, mapping, p, src).items():
        where = f"column {columns[0]!r} of the {split} split"
        if key == "y" and not p.columns:
            if names is not None and _is_text(data.data.schema.field(columns[0]).type):
                index = {name: i for i, name in enumerate(names)}
                out[key] = np.asarray([index[value] for value in data.data.column(columns[0]).to_pylist()], np.int32)
                continue
            y = _column(data, columns[0], split, src)
            if y.ndim == 1 and (p.classes or names is not None or not np.issubdtype(y.dtype, np.floating)):
                out[key] = _labels(y, src, where, p.classes, rows=_index_row)
            else:  # float targets (regression), or several labels per row (multilabel): as they are, floats float32
                out[key] = y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else _integers(y, src, where)
            continue
        parts = [_column(data, c, split, src) for c in columns]
        if key == "x" and not p.columns:
            values = parts[0] if len(parts) == 1 and parts[0].ndim > 1 else np.concatenate([a.reshape(len(a), -1) for a in parts], axis=1)
            out[key] = _features(values, src, f"features of the {split} split")
        else:
            out[key] = parts[0].astype(np.float32) if np.issubdtype(parts[0].dtype, np.floating) else _integers(parts[0], src, where)
    return out


def _chosen(data, split: str, mapping: dict[str, str], p: DatasetsParams, src: str) -> dict[str, list[str]]:
    """The columns of each batch key (x: ``features``, or every numeric column but the label's)."""
    present = data.column_names
    chosen = {}
    for key, column in mapping.items():
        if key == "x" and not p.columns and not column:
            columns = [c for c in present if c != mapping["y"] and _is_numeric(data.data.schema.field(c).type)]
            if not columns:
                raise UsageError(f"{src}: no numeric column besides the label {mapping['y']!r} (columns: {', '.join(present)}); "
                                 "name the features with --set loader.features=COLUMN,...")
        else:
            columns = [c.strip() for c in column.split(",") if c.strip()] if key == "x" and not p.columns else [column]
        for c in columns:
            if c not in present:
                option = "columns" if p.columns else "features" if key == "x" else "label"
                raise UsageError(f"{src}: no column {c!r} in the {split} split (columns: {', '.join(present)}); "
                                 f"--set loader.{option}=...")
        chosen[key] = columns
    return chosen


def _integers(values, src: str, where: str):
    """Integers (or booleans) as int32, refused where one does not fit."""
    import numpy as np

    if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
        raise UsageError(f"{src}: {where} holds {int(values.max()) if values.max() >= 2**31 else int(values.min())}, "
                         "beyond int32's range")
    return values.astype(np.int32)


def _column(data, column: str, split: str, src: str):
    """A numeric column as an array of one row per example (a list column: (n, length, ...))."""
    import numpy as np

    kind = data.data.schema.field(column).type
    if not _is_numeric(kind):
        raise UsageError(f"{src}: column {column!r} of the {split} split holds {kind} values, not numbers; choose numeric columns "
                         f"(numeric: {', '.join(c for c in data.column_names if _is_numeric(data.data.schema.field(c).type)) or 'none'})")
    values = data.select_columns([column]).with_format("numpy")[:][column]
    if values.dtype == object:
        why = "lists of different lengths" if any(isinstance(x, np.ndarray) for x in values) else "missing (null) values"
        raise UsageError(f"{src}: column {column!r} of the {split} split holds {why}; every row needs a value of one shape")
    if values.dtype == np.bool_:
        return values.astype(np.int8)  # 0 and 1: numbers, as labels and as features
    if np.issubdtype(values.dtype, np.floating) and values.dtype != np.float32:
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(np.float32)
    return values


def _is_numeric(kind) -> bool:
    import pyarrow as pa

    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind))


def _is_text(kind) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _hold_out(train: dict, p: DatasetsParams, src: str) -> tuple[dict, dict]:
    """Train less ``test_fraction`` of its rows, and those rows (chosen by ``split_seed``), in order."""
    import numpy as np

    n = len(next(iter(train.values())))
    held = int(round(n * p.test_fraction))
    if held < 1 or held >= n:
        raise UsageError(f"{src} has no test split, and test_fraction = {p.test_fraction:g} of its {n} training rows holds out "
                         f"{held}; set test_fraction (or test_split) so that test and train each get a row")
    order = np.random.default_rng(p.split_seed).permutation(n)
    test, rest = np.sort(order[:held]), np.sort(order[held:])
    return {k: a[rest] for k, a in train.items()}, {k: a[test] for k, a in train.items()}


def _num_classes(p: DatasetsParams, mapping: dict[str, str], names: list | None, splits: list[dict]) -> int | None:
    """The classes of y (or the vocabulary of ``tokens``): ``classes``, the label names, or the largest + 1; None for
    float targets."""
    import numpy as np

    if names is not None:
        if p.classes and p.classes < len(names):
            raise UsageError(f"loader 'datasets': column {mapping['y']!r} has {len(names)} classes, but loader.classes = "
                             f"{p.classes}; raise it or leave it 0")
        return p.classes or len(names)
    if p.classes:
        return p.classes
    key = "tokens" if p.columns and "tokens" in splits[0] else "y" if "y" in splits[0] else None
    if key is None or not np.issubdtype(splits[0][key].dtype, np.integer) or (key == "y" and splits[0][key].ndim != 1):
        return None  # float targets, several labels per row, no labels: no classes
    return max(int(s[key].max()) for s in splits) + 1


def _as_split(arrays: dict | None, p: DatasetsParams):
    """A :class:`Split` of x and y, or the dict of ``columns`` (None: val, carved by the engine)."""
    if arrays is None or p.columns:
        return arrays
    return Split(arrays["x"], arrays["y"])


@hookimpl
def jaxyard_register_loaders(register):
    register("datasets", load, params=DatasetsParams)

"""``jaxyard predict``: batched inference with a task's postprocessing.

The model comes from a run directory (its checkpoint and the model's code, read as ``eval``
reads them) or from a ``jax`` artifact of ``jaxyard export`` (no model code: its sidecar gives the
input's shape and dtype, the task and its context). Inputs are one array of rows: an ``.npz``
file's (``x``, ``tokens``, the only one, or ``--key``) or a ``.csv`` file's (one example a row,
finite numbers only; a first row that is not all numbers, or is the column indices ``0..n-1`` as
pandas writes them, is a header unless ``header`` says), the extension in any case. The task's
:meth:`~jaxyard.Task.predict` turns the model's outputs into named predictions, written by the
output's extension: ``.npz`` (arrays by name), ``.csv`` (one row per example, a column per value:
``probabilities_0``..., the name alone for one value a row) or ``.jsonl`` (one JSON object per
example, strict JSON: a non-finite prediction is refused).
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import math
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from jaxyard.core.errors import JaxyardError, PluginError, UsageError, one_line
from jaxyard.core.store.rundir import write_atomic
from jaxyard.core.task import Task
from jaxyard.core.train.events import Echo, silent

INPUTS = (".npz", ".csv")
OUTPUTS = (".npz", ".csv", ".jsonl")
KEYS = ("x", "tokens")  # what an .npz's input array is called, when it holds several and no --key is given


@attrs.frozen
class Predictor:
    """A model to predict with, and what its task needs to postprocess it."""

    task: Any
    task_name: str
    context: dict[str, Any]
    row_shape: tuple[int, ...]
    row_dtype: np.dtype
    call: Callable[[np.ndarray], Any]  # a batch of rows -> the model's outputs (device or host arrays)
    source: str  # described, for messages


@attrs.frozen
class Prediction:
    """What :func:`predict` wrote."""

    output: Path
    rows: int
    shapes: dict[str, tuple[int, ...]]  # each prediction's shape, by name
    source: str
    header: bool | None = None  # a .csv input: whether its first row was read as a header


def predict(source: str | os.PathLike, *, inputs: str | os.PathLike, output: str | os.PathLike, key: str | None = None,
            checkpoint: str = "latest", weights: str = "model", batch_size: int = 256, max_new_tokens: int | None = None,
            header: bool | None = None, registry=None, echo: Echo = silent) -> Prediction:
    """Predict for every row of ``inputs`` with the model of ``source`` (a run directory or a jax
    artifact) and write the task's predictions to ``output``.

    :param key: the ``.npz`` array to read (default: ``x``, ``tokens``, or the file's only array).
    :param checkpoint, weights: a run directory's checkpoint, as ``eval`` takes them.
    :param batch_size: rows per model call (every batch padded to it, or to all the rows when fewer:
        one compiled program).
    :param max_new_tokens: passed to the task's ``predict`` when given (generation).
    :param header: a ``.csv`` input's first row is a header (True), an example (False), or either,
        as :func:`read_inputs` decides (None); which was chosen is echoed.
    """
    output = Path(output)
    if output.suffix.lower() not in OUTPUTS:
        raise UsageError(f"--output {output}: unknown extension {output.suffix or '(none)'!r}; expected {', '.join(OUTPUTS)}")
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory; name the file to write")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: expected at least 1")
    rows, where, has_header = read_inputs(inputs, key, header=header)
    if has_header is not None:
        how = "" if header is not None else f" (auto; {'--no-header reads it as an example' if has_header else '--header skips it'})"
        echo(f"{where}: header row: {'yes' if has_header else 'no'}{how}")
    predictor = open_predictor(source, checkpoint=checkpoint, weights=weights, registry=registry, echo=echo)
    rows = _shaped(rows, predictor.row_shape)
    options = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    method = getattr(predictor.task, "predict", None)
    if method is None:  # a task object from before predict existed: the model's raw outputs
        def method(model, inputs, context, **options):
            return Task.predict(predictor.task, model, inputs, context, **options)
    if options and not _takes(method, "max_new_tokens"):
        raise UsageError(f"--max-new-tokens: task {predictor.task_name!r} does not generate (its predict takes no max_new_tokens)")
    model = _batched(predictor, min(batch_size, len(rows)))
    parts = []
    for start in range(0, len(rows), batch_size):  # the task sees --batch-size rows at a time
        chunk = rows[start:start + batch_size]
        try:
            got = method(model, chunk, predictor.context, **options)
        except UsageError as err:
            raise UsageError(f"{where}: {err}") from None
        except JaxyardError:
            raise
        except Exception as err:  # the task's own code: named like a factory's failure
            raise PluginError(f"task {predictor.task_name!r} failed predicting: {one_line(err)}") from err
        parts.append(_checked(got, len(chunk), predictor.task_name))
    predictions = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    write_outputs(output, predictions, task=predictor.task_name)
    return Prediction(output, len(rows), {k: tuple(v.shape) for k, v in predictions.items()}, predictor.source, has_header)


# -- the model ----------------------------------------------------------------------------------


def open_predictor(source: str | os.PathLike, *, checkpoint: str = "latest", weights: str = "model", registry=None,
                   echo: Echo = silent) -> Predictor:
    """A run directory's model at a checkpoint, or a jax artifact's (its sidecar next to it)."""
    path = Path(source)
    if path.is_dir():
        return _from_run(path, checkpoint, weights, registry, echo)
    from jaxyard.core.deploy.export import FORMATS, sidecar_of

    if path.is_file() and sidecar_of(path).is_file():
        if str(checkpoint) != "latest" or weights != "model":
            given = f"--checkpoint {checkpoint}" if str(checkpoint) != "latest" else f"--weights {weights}"
            raise UsageError(f"{given}: {path} is an exported artifact, which holds the weights of one checkpoint; "
                             "choose them when exporting (jaxyard export RUN_DIR --checkpoint ... --weights ...)")
        return _from_artifact(path, registry)
    if path.suffix.lower() in FORMATS.values() and path.suffix.lower() != FORMATS["jax"]:
        raise UsageError(f"{path}: predict reads a run directory or a jax artifact (export --format jax); "
                         f"a {path.suffix} file is for other runtimes")
    if path.is_file():
        raise UsageError(f"{path} has no sidecar {sidecar_of(path).name} beside it; predict reads a run directory or a jax "
                         "artifact as export --format jax writes it (the two files)")
    raise UsageError(f"{path}: no such run directory or jax artifact")


def _from_run(run_dir: Path, checkpoint: str, weights: str, registry, echo: Echo) -> Predictor:
    import jax
    from flax import nnx

    from jaxyard.core.deploy.loading import load_trained

    trained = load_trained(run_dir, checkpoint=checkpoint, weights=weights, registry=registry, echo=echo)
    graphdef, state = nnx.split(trained.model)
    leaves, treedef = jax.tree.flatten(state)  # plain arrays: jit's fast path (a state of Variables retraces every call)
    jitted = jax.jit(lambda arrays, x: nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays), copy=True)(x))  # weights: an argument
    return Predictor(trained.task, trained.config.task.name, trained.context, trained.row_shape, trained.row_dtype,
                     lambda x: jitted(leaves, x), trained.describe())


def _from_artifact(path: Path, registry) -> Predictor:
    import jax

    from jaxyard.core.deploy.export import KIND, sidecar_of

    sidecar = sidecar_of(path)
    try:
        meta = json.loads(sidecar.read_text())
        kind, task, shape, dtype = meta["format"], meta["task"], meta["input"]["shape"], np.dtype(meta["input"]["dtype"])
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{sidecar} is not a jaxyard export sidecar ({one_line(err)})") from None
    if kind != KIND:
        raise UsageError(f"{sidecar} is a {kind!r} file, not a jaxyard export sidecar ({KIND!r})")
    blob = path.read_bytes()
    if meta.get("sha256") not in (None, hashlib.sha256(blob).hexdigest()):
        raise UsageError(f"{path} is not the artifact its sidecar {sidecar.name} describes (another export replaced one "
                         "of them); export again")
    exported = jax.export.deserialize(bytearray(blob))
    context = dict(meta.get("context", {}))
    if "input_shape" in context:
        context["input_shape"] = tuple(context["input_shape"])
    source = meta.get("source", {})
    what = f"{path} (exported from {source.get('run_dir', '?')} at checkpoint step {source.get('step', '?')})"
    return Predictor(_task(task, registry, sidecar), task["name"], context, tuple(shape[1:]), dtype, jax.jit(exported.call), what)


def _task(task: Mapping[str, Any], registry, where: Path):
    """The sidecar's task, built from its name and parameters by the installed plugins."""
    from jaxyard.core.registry import params as P
    from jaxyard.core.registry.config import Choice
    from jaxyard.core.registry.loading import build_registry

    registry = registry or build_registry()
    entry = registry.get("task", task["name"])
    params = P.build(entry.params, dict(task.get("params", {})), where=f"task {task['name']!r} of {where}")
    return Choice(entry, params).create()


def _batched(predictor: Predictor, size: int) -> Callable[[Any], Any]:
    """``predictor``'s model for a task: any number of rows of the model's row shape, in batches of
    exactly ``size`` rows (a shorter one padded with copies of its first row: one compiled shape),
    outputs as NumPy arrays trimmed back to the rows given."""
    import jax

    def model(x):
        x = np.asarray(x)
        if x.ndim < 1 or tuple(x.shape[1:]) != predictor.row_shape:
            got = x.shape[1:] if x.ndim else "a scalar"
            raise UsageError(f"examples of shape {got}; the model reads examples of shape {predictor.row_shape} "
                             f"({predictor.row_dtype})")
        x = _cast(x, predictor.row_dtype)
        outs = []
        for start in range(0, len(x), size):
            chunk = x[start:start + size]
            real = len(chunk)
            if real < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - real, axis=0)])
            outs.append(jax.tree.map(lambda a, real=real: np.asarray(a)[:real], predictor.call(chunk)))
        return jax.tree.map(lambda *a: np.concatenate(a), *outs)

    return model


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows as the model's dtype; float values into an integer model only when they are whole numbers."""
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
        if not (np.issubdtype(x.dtype, np.number) and np.all(np.isfinite(x)) and np.array_equal(x, np.round(x))):
            raise UsageError(f"{x.dtype} values; the model reads integers ({dtype})")
    elif not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise UsageError(f"{x.dtype} values; the model reads numbers ({dtype})")
    return x.astype(dtype, copy=False)


def _takes(method, name: str) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def _checked(got: Any, rows: int, task: str) -> dict[str, np.ndarray]:
    """A task's predictions: a dict of arrays with one row per example."""
    if not isinstance(got, Mapping) or not got:
        raise PluginError(f"task {task!r}: predict returned {type(got).__name__}; expected a dict of arrays by name (see jaxyard.Task.predict)")
    out = {}
    for name, value in got.items():
        array = np.asarray(value)
        if array.ndim == 0 or len(array) != rows:
            raise PluginError(f"task {task!r}: predict gave {name!r} of shape {array.shape} for {rows} examples; "
                              "expected one row per example")
        out[str(name)] = array
    return out


# -- files --------------------------------------------------------------------------------------


def read_inputs(path: str | os.PathLike, key: str | None = None, *,
                header: bool | None = None) -> tuple[np.ndarray, str, bool | None]:
    """The rows of an ``.npz`` or ``.csv`` file (the extension in any case), how to name them in a
    message, and whether a ``.csv``'s first row was a header (None for an ``.npz``). Non-finite float
    features are refused, naming the first row holding one.

    :param header: a ``.csv``'s first row is a header (True), an example (False), or a header when it
        is not all numbers or is the column indices ``0,1,...,n-1`` (None: pandas' ``to_csv`` of an array).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INPUTS:
        raise UsageError(f"--input {path}: unknown extension {path.suffix or '(none)'!r}; expected {', '.join(INPUTS)}")
    if not path.is_file():
        raise UsageError(f"--input {path}: no such file")
    if suffix == ".csv":
        if key is not None:
            raise UsageError(f"--key {key!r}: a .csv file holds one table; --key names an array of an .npz file")
        rows, has_header = _read_csv(path, header)
        return rows, str(path), has_header
    if header is not None:
        raise UsageError(f"--{'' if header else 'no-'}header: {path} is an .npz file, which has no header row; "
                         "drop the option (it is for a .csv input)")
    rows, where = _read_npz(path, key)
    if rows.ndim == 0 or len(rows) == 0:
        raise UsageError(f"{where} holds no examples (shape {rows.shape})")
    from jaxyard.core.train.data import refuse_non_finite

    refuse_non_finite(rows, where)
    return rows, where, None


def _read_npz(path: Path, key: str | None) -> tuple[np.ndarray, str]:
    try:
        found = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # numpy's "pickled data" for any file not a zip nor .npy
        raise UsageError(f"{path} is not a readable .npz file (not a zip of .npy arrays as numpy.savez writes); "
                         "check the file or export it again") from None
    if not isinstance(found, np.lib.npyio.NpzFile):  # an .npy file named .npz
        raise UsageError(f"{path} is a single .npy array, not an .npz file; save it with numpy.savez(path, x=array)")
    with found:
        names = list(found.files)
        chosen = key if key is not None else (names[0] if len(names) == 1 else next((k for k in KEYS if k in names), None))
        if chosen not in names:
            wanted = repr(key) if key is not None else " or ".join(map(repr, KEYS))
            raise UsageError(f"{path} has no array {wanted} (it holds {', '.join(names) or 'none'}); choose one with --key")
        where = f"{path} array {chosen!r}"
        try:
            rows = found[chosen]
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise UsageError(f"{where} holds Python objects (pickled); save an array of numbers") from None
            raise UsageError(f"{where} is not readable: {one_line(err)}") from None
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise UsageError(f"{where} is not readable ({one_line(err) or type(err).__name__}); check the file") from None
    return rows, where


def _read_csv(path: Path, header: bool | None) -> tuple[np.ndarray, bool]:
    """A CSV of finite numbers, one example a row, and whether its first row was a header
    (``header``, or when None: a first row that is not all numbers or is ``0,1,...,n-1``)."""
    lines = [row for row in csv.reader(io.StringIO(path.read_text())) if any(cell.strip() for cell in row)]
    has_header = bool(lines) and (header if header is not None else _looks_like_header(lines[0]))
    if has_header:
        lines = lines[1:]
    if not lines:
        raise UsageError(f"{path} holds no rows of numbers{' below its header row' if has_header else ''}")
    width = len(lines[0])
    values = []
    for i, row in enumerate(lines, start=1):
        if len(row) != width:
            raise UsageError(f"{path}: data row {i} has {len(row)} values, the first has {width}; every row is one example")
        bad = next((cell for cell in row if not _is_number(cell)), None)
        if bad is not None:
            hint = " (--header reads the first row as column names)" if i == 1 and not has_header else ""
            raise UsageError(f"{path}: data row {i} holds {bad.strip()!r}, not a number{hint}")
        numbers = [float(cell) for cell in row]
        infinite = next((cell for cell, v in zip(row, numbers, strict=True) if not math.isfinite(v)), None)
        if infinite is not None:
            raise UsageError(f"{path}: data row {i} holds {infinite.strip()!r}, not a finite number; "
                             "drop or fill the row")
        values.append(numbers)
    array = np.asarray(values)
    whole = np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))
    integers = whole and all("." not in c and "e" not in c.lower() for row in lines for c in row)
    return (array.astype(np.int64) if integers else array), has_header


def _looks_like_header(row: list[str]) -> bool:
    """A first row that is not all numbers, or is exactly the column indices 0..n-1 (what
    ``pandas.DataFrame(array).to_csv(index=False)`` writes)."""
    if not all(_is_number(cell) for cell in row):
        return True
    return [cell.strip() for cell in row] == [str(j) for j in range(len(row))]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _shaped(rows: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray:
    """Flat rows (a CSV's) of a model reading examples of several axes, in that shape."""
    if rows.ndim == 2 and len(row_shape) > 1 and rows.shape[1] == math.prod(row_shape):
        return rows.reshape(len(rows), *row_shape)
    return rows


def write_outputs(path: Path, predictions: Mapping[str, np.ndarray], task: str = "?") -> None:
    """``predictions`` to ``path`` by its extension, in any case (one file, written atomically). A
    CSV has a column per value, ``name_0``... (``name`` alone for one value a row); a JSONL file
    is strict JSON (a non-finite prediction is refused, naming ``task``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays: dict[str, Any] = dict(predictions)
        write_atomic(path, lambda f: np.savez(f, **arrays))
        return
    columns = {}
    for name, array in predictions.items():
        flat = array.reshape(len(array), -1)
        if flat.shape[1] == 1:  # one value a row: (n,) or (n, 1), such as a single regression target
            columns[name] = flat[:, 0]
        else:
            columns.update({f"{name}_{j}": flat[:, j] for j in range(flat.shape[1])})
    rows = len(next(iter(predictions.values())))
    if suffix == ".csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for i in range(rows):
            writer.writerow([_text(values[i]) for values in columns.values()])
        write_atomic(path, out.getvalue())
        return
    lines = []
    for i in range(rows):
        try:
            lines.append(json.dumps({name: array[i].tolist() for name, array in predictions.items()}, allow_nan=False))
        except ValueError:
            name = next((n for n, a in predictions.items()
                         if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a[i]))), "?")
            raise UsageError(f"--output {path}: task {task!r} predicted a non-finite {name!r} for example {i}, which JSON "
                             "cannot hold; write .npz or .csv to keep it") from None
    write_atomic(path, "".join(line + "\n" for line in lines))


def _text(value: Any) -> str:
    """A CSV cell: integers as they are, floats with the digits that read back the same value."""
    if isinstance(value, np.floating):
        return f"{value:.9g}" if value.dtype.itemsize <= 4 else repr(float(value))
    return str(value.item() if isinstance(value, np.generic) else value)

"""``jaxyard new-plugin``: a complete plugin package, ready to install, test and train with.

:func:`write_plugin` writes a package ``jaxyard-NAME`` (module ``jaxyard_NAME``) with one
documented, working component per requested kind, all named NAME; an entry point in the group
``jaxyard``; a test file that runs jaxyard's conformance kit (:mod:`jaxyard.core.kit`) over
them; and a README with the commands to install, test and run. Nothing here imports jax.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from string import Template

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.entries import KINDS

__all__ = ["NAME_PATTERN", "write_plugin"]

#: A plugin name: lower-case letters and digits, single ``-`` or ``_`` between them, starting with
#: a letter (the module is ``jaxyard_`` + the name with ``-`` as ``_``).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_NAME = 40


def write_plugin(directory: str | os.PathLike, name: str, kinds: Iterable[str] = ("optimizer",)) -> Path:
    """Write the package ``jaxyard-NAME`` into ``directory`` (created; must be new or empty).

    :param name: the plugin's name: the components', the entry point's, and the package is
        ``jaxyard-NAME`` with module ``jaxyard_NAME``.
    :param kinds: any of ``optimizer``, ``scheduler``, ``model``, ``loader``, ``checkpointer``,
        ``logger`` (plural accepted): one component of each.
    :returns: the package directory.
    :raises jaxyard.UsageError: an invalid name or kind, a name jaxyard has built in for one of
        the kinds, or a directory that exists and is not empty (one line each).
    """
    from jaxyard.core.registry.loading import normalize_kind

    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid plugin name {name!r}: use lower-case letters and digits, with single '-' or '_' between them, "
            f"starting with a letter, at most {MAX_NAME} characters (for example my-optim)"
        )
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = sorted({normalize_kind(k) for k in kinds}, key=KINDS.index)
    if not chosen:
        raise UsageError(f"choose at least one kind: {', '.join(KINDS)}")
    _refuse_builtin_names(name, chosen)
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        what = "is not a directory" if not directory.is_dir() else "is not empty"
        raise UsageError(f"{directory} {what}; choose a new directory (--dir DIR)")

    module = "jaxyard_" + name.replace("-", "_")
    fields = {
        "name": name,
        "module": module,
        "dist": f"jaxyard-{name}",
        "kinds_text": _kinds_text(chosen),
        "path_import": "\nfrom pathlib import Path\n" if {"checkpointer", "logger"} & set(chosen) else "",
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": _readme(chosen),
        f"src/{module}/__init__.py": HEADER + "".join(SECTIONS[k] for k in chosen),
        "tests/test_plugin.py": TESTS,
        ".gitignore": GITIGNORE,
    }
    files.update({f"src/{module}/{path}": text for kind in chosen for path, text in EXTRA_FILES.get(kind, {}).items()})
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(text).substitute(fields), encoding="utf-8")
    return directory


def _refuse_builtin_names(name: str, kinds: list[str]) -> None:
    """A component named like a built-in of its kind would be reachable only as NAME:NAME."""
    from jaxyard.core.registry.loading import build_registry

    registry = build_registry()
    for entry in registry.entries():
        if entry.source == "builtin" and entry.kind in kinds and entry.name == name:
            raise UsageError(f"{entry.kind} {name!r} is built into jaxyard; choose another plugin name")


def _kinds_text(kinds: list[str]) -> str:
    words = [f"{'an' if k[0] in 'aeiou' else 'a'} {k}" for k in kinds]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_RUN_OPTIONS = {"optimizer": "--optimizer", "scheduler": "--scheduler", "model": "--model", "loader": "--loader",
                "checkpointer": "--checkpointer", "logger": "--logger"}
_WHAT = {
    "optimizer": "SGD with momentum and decoupled weight decay, a chain of optax primitives",
    "scheduler": "polynomial decay from the peak rate to a fraction of it",
    "model": "a small MLP (flax nnx): Linear, ReLU, dropout, Linear",
    "loader": "learnable synthetic data: Gaussian blobs, one per class",
    "checkpointer": "one directory per step: the arrays in an .npz, their dtypes, shapes and checksums in a manifest",
    "logger": "one tab-separated row of metrics per epoch, in a file of the run directory",
}


def _readme(kinds: list[str]) -> str:
    rows = "\n".join(f"| {k} | `$name` | {_WHAT[k]} |" for k in kinds)
    run = " ".join(f"{_RUN_OPTIONS[k]} $name" for k in kinds)
    shows = "\n".join(f"jaxyard show {k} $name" for k in kinds)
    return README.replace("@ROWS@", rows).replace("@RUN@", run).replace("@SHOWS@", shows)


# === templates ($name, $module, $dist, $kinds_text) ============================================

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A jaxyard plugin: $kinds_text named $name."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["jaxyard"]

[project.optional-dependencies]
test = ["pytest>=8"]

# How jaxyard finds the plugin: the group "jaxyard", the plugin's name and its module.
[project.entry-points.jaxyard]
$name = "$module"

[tool.setuptools]
package-dir = { "" = "src" }
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

GITIGNORE = '''\
__pycache__/
*.egg-info/
build/
dist/
runs/
'''

README = '''\
# $dist

A jaxyard plugin: $kinds_text, each named `$name`.

| kind | name | what |
| --- | --- | --- |
@ROWS@

## Install

In the environment where jaxyard is installed:

```bash
pip install -e .            # offline, with setuptools and wheel at hand: add --no-deps --no-build-isolation
jaxyard plugins             # lists "$name [entry point, $dist 0.1.0] ok"
jaxyard list                # its components appear under their kinds
@SHOWS@
```

## Test

```bash
python -m pytest -q
```

`tests/test_plugin.py` runs jaxyard's conformance kit (`jaxyard.core.kit`) over every
component of the installed package: one test per component and check (`tier="api"` for the
quick ones only). A check that cannot apply to a component is opted out with its reason:
`parametrize_with_checks(distribution="$dist", skip={"optimizer:$name": {"jit_equals_eager": "why"}})`.

## Run

```bash
jaxyard run @RUN@ --epochs 2
```

Each component's parameters are set with `--set KIND.KEY=VALUE` (a logger's with
`--set logger.$name.KEY=VALUE`); `jaxyard show KIND $name` lists them. The factories are
documented in jaxyard's `core/registry/hookspecs.py`.
'''

HEADER = '''\
"""$dist: a jaxyard plugin with $kinds_text, each named $name.

jaxyard finds it through its entry point (``[project.entry-points.jaxyard]`` in pyproject.toml).
Each hook below registers one component: ``register(name, factory, params=ParamsClass)``; the
factory's first docstring line is its description in ``jaxyard list``. Import jax, flax, optax
and numpy inside the factories (or modules they import), never at the top of this module:
listing components must stay fast. jaxyard's ``core/registry/hookspecs.py`` documents every factory.
"""

from __future__ import annotations
$path_import
import attrs
from attrs import validators as v

import jaxyard

NAME = "$name"
'''

SECTIONS = {
    "optimizer": '''

# --- optimizer --------------------------------------------------------------------------------


@attrs.frozen
class OptimizerParams:
    momentum: float = jaxyard.param(0.9, "decay of the running average of the gradients (0: plain SGD)", validator=[v.ge(0.0), v.lt(1.0)])
    nesterov: bool = jaxyard.param(False, "use Nesterov momentum")
    weight_decay: float = jaxyard.param(0.0, "decoupled weight decay, scaled by the learning rate (0: off)", validator=v.ge(0.0))


def optimizer(p: OptimizerParams, *, learning_rate):
    """SGD with momentum and decoupled weight decay, chained from optax primitives."""
    import optax

    return optax.chain(
        optax.trace(decay=p.momentum, nesterov=p.nesterov),
        optax.add_decayed_weights(p.weight_decay),
        optax.scale_by_learning_rate(learning_rate),  # the run's schedule, always last
    )


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register(NAME, optimizer, params=OptimizerParams)
''',
    "scheduler": '''

# --- scheduler --------------------------------------------------------------------------------


@attrs.frozen
class SchedulerParams:
    power: float = jaxyard.param(2.0, "exponent of the decay: 1 is linear, more falls faster at first", validator=v.gt(0.0))
    end_fraction: float = jaxyard.param(0.01, "final rate as a fraction of the peak", validator=[v.ge(0.0), v.le(1.0)])


def scheduler(p: SchedulerParams, *, learning_rate, decay_steps):
    """Polynomial decay from the peak rate to end_fraction x peak over the rest of the run."""
    import optax

    return optax.polynomial_schedule(
        init_value=learning_rate,
        end_value=learning_rate * p.end_fraction,
        power=p.power,
        transition_steps=max(decay_steps, 1),
    )


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    register(NAME, scheduler, params=SchedulerParams)
''',
    "model": '''

# --- model ------------------------------------------------------------------------------------


@attrs.frozen
class ModelParams:
    hidden: int = jaxyard.param(64, "units of the hidden layer", validator=v.ge(1))
    dropout_rate: float = jaxyard.param(0.1, "dropout after the hidden layer, active only in training", validator=[v.ge(0.0), v.lt(1.0)])


def model(p: ModelParams, *, input_shape, num_classes, rngs):
    """A small MLP: flatten, Linear, ReLU, dropout, Linear to the logits."""
    from $module._model import MLP  # flax is imported only when a model is built

    return MLP(input_shape, p.hidden, num_classes, dropout_rate=p.dropout_rate, rngs=rngs)


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register(NAME, model, params=ModelParams)
''',
    "loader": '''

# --- loader -----------------------------------------------------------------------------------


@attrs.frozen
class LoaderParams:
    train_size: int = jaxyard.param(512, "training examples", validator=v.ge(1))
    val_size: int = jaxyard.param(128, "validation examples", validator=v.ge(1))
    test_size: int = jaxyard.param(128, "test examples", validator=v.ge(1))
    features: int = jaxyard.param(16, "features per example", validator=v.ge(1))
    classes: int = jaxyard.param(4, "number of classes", validator=v.ge(2))
    separation: float = jaxyard.param(3.0, "spread of the class means, in noise standard deviations", validator=v.ge(0.0))
    data_seed: int = jaxyard.param(0, "seeds the data (not run.seed: a sweep over seeds trains on the same data)", validator=v.ge(0))


def loader(p: LoaderParams, *, seed):
    """Learnable synthetic data: Gaussian blobs around one random mean per class."""
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    means = rng.normal(size=(p.classes, p.features)) * p.separation / np.sqrt(p.features)

    def split(n):
        y = rng.integers(0, p.classes, size=n)
        x = means[y] + rng.normal(size=(n, p.features))
        return jaxyard.Split(x.astype(np.float32), y.astype(np.int32))

    return jaxyard.Dataset(split(p.train_size), split(p.val_size), split(p.test_size), p.classes)


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register(NAME, loader, params=LoaderParams)
''',
    "checkpointer": '''

# --- checkpointer -----------------------------------------------------------------------------


@attrs.frozen
class CheckpointerParams:
    compress: bool = jaxyard.param(False, "compress the arrays (smaller files, slower saves)")


def checkpointer(p: CheckpointerParams, *, directory):
    """Checkpoints as .npz files with a manifest of dtypes, shapes and checksums (storage only)."""
    from $module._checkpointer import NpzCheckpointer  # numpy is imported only when it is built

    return NpzCheckpointer(Path(directory), compress=p.compress)


@jaxyard.hookimpl
def jaxyard_register_checkpointers(register):
    register(NAME, checkpointer, params=CheckpointerParams)
''',
    "logger": '''

# --- logger -----------------------------------------------------------------------------------

COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "train_time", "val_time")


@attrs.frozen
class LoggerParams:
    filename: str = jaxyard.param("$name-metrics.tsv", "file in the run directory", validator=v.min_len(1))


class FileLogger:
    """A header and one tab-separated row per epoch. ``start`` rewrites the file from the epochs
    the run already has (``run.history``), so after a kill and ``jaxyard resume`` each epoch is
    in it exactly once."""

    def __init__(self, path: Path):
        self.path = path

    def start(self, run) -> None:
        rows = "".join(self._row(r) for r in run.history)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("\\t".join(COLUMNS) + "\\n" + rows, encoding="utf-8")
        tmp.replace(self.path)

    def log_epoch(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(self._row(record))

    def finish(self, run, status: str, result=None) -> None:
        pass  # every row is already written; a logger holding a connection would close it here

    @staticmethod
    def _row(record: dict) -> str:
        return "\\t".join(str(record.get(c, "")) for c in COLUMNS) + "\\n"


def logger(p: LoggerParams, *, directory):
    """One tab-separated row of metrics per epoch, in a file of the run directory."""
    return FileLogger(Path(directory) / p.filename)


@jaxyard.hookimpl
def jaxyard_register_loggers(register):
    register(NAME, logger, params=LoggerParams)
''',
}

EXTRA_FILES = {
    "model": {
        "_model.py": '''\
"""The model's module: imports flax, so it is imported only when a model is built."""

from __future__ import annotations

import math

import jax
from flax import nnx


class MLP(nnx.Module):
    """Flatten, Linear, ReLU, dropout, Linear. ``model.train()`` and ``model.eval()`` switch the
    dropout, as the engine expects."""

    def __init__(self, input_shape, hidden: int, num_classes: int, *, dropout_rate: float, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(math.prod(input_shape), hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(self.dropout(jax.nn.relu(self.hidden(x))))
''',
    },
    "checkpointer": {
        "_checkpointer.py": '''\
"""Checkpoints as .npz files: storage only (jaxyard decides which step is latest or best, which
to keep, and passes over damaged ones: jaxyard.CheckpointPolicy)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np

import jaxyard

_DAMAGE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and friends: ml_dtypes (a jax dependency) registers them
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


class NpzCheckpointer:
    """One directory per step, named after it: ``arrays.npz`` (each array's bytes) and
    ``manifest.json`` (each array's dtype, shape and crc32, and the meta). A step is written to a
    temporary directory and renamed into place, so ``steps()`` never lists a half-written one;
    ``load`` verifies the checksums, so a damaged step is an error jaxyard can pass over."""

    def __init__(self, directory: Path, *, compress: bool = False):
        self.directory = Path(directory)
        self.compress = compress

    def _error(self, step: int, cause: str) -> jaxyard.CheckpointError:
        return jaxyard.CheckpointError(cause, directory=self.directory, step=step)

    def save(self, step: int, arrays: dict, meta: dict) -> None:
        step = int(step)
        final = self.directory / str(step)
        if final.exists():
            try:
                self.load(step)
            except jaxyard.CheckpointError:
                shutil.rmtree(final, ignore_errors=True)  # a damaged leftover: replaced below
            else:
                raise self._error(step, "a checkpoint of this step already exists")
        tmp = self.directory / f".tmp-{step}-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            blobs, manifest = {}, {}
            for i, (key, array) in enumerate(arrays.items()):
                array = np.asarray(array)  # not ascontiguousarray: it turns a scalar's shape () into (1,)
                raw = np.frombuffer(array.tobytes(), np.uint8)  # the bytes in C order, whatever the layout
                blobs[f"a{i}"] = raw
                manifest[key] = {"blob": f"a{i}", "dtype": array.dtype.name, "shape": list(array.shape), "crc32": zlib.crc32(raw.tobytes())}
            (np.savez_compressed if self.compress else np.savez)(tmp / "arrays.npz", **blobs)
            text = json.dumps({"step": step, "arrays": manifest, "meta": meta})
            (tmp / "manifest.json").write_text(text, encoding="utf-8")
            os.replace(tmp, final)
        except (OSError, TypeError, ValueError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._error(step, f"could not save: {type(err).__name__}: {err}") from None

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def load(self, step: int) -> jaxyard.Restored:
        step = int(step)
        path = self.directory / str(step)
        if not path.is_dir():
            raise self._error(step, f"no such checkpoint (steps: {self.steps()})")
        try:
            doc = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            arrays = {}
            with np.load(path / "arrays.npz", allow_pickle=False) as blobs:
                for key, entry in doc["arrays"].items():
                    raw = blobs[entry["blob"]]
                    if zlib.crc32(raw.tobytes()) != entry["crc32"]:
                        raise ValueError(f"checksum mismatch in {key}")
                    arrays[key] = np.frombuffer(raw.tobytes(), _dtype(entry["dtype"])).reshape(entry["shape"]).copy()
        except _DAMAGE as err:
            raise self._error(step, f"damaged: {type(err).__name__}: {err}") from None
        if doc.get("step") != step:
            raise self._error(step, f"damaged: its manifest is for step {doc.get('step')!r}")
        return jaxyard.Restored(step, arrays, doc["meta"])

    def delete(self, step: int) -> None:
        try:
            shutil.rmtree(self.directory / str(int(step)))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise self._error(int(step), f"could not delete: {err}") from None

    def wait(self) -> None:
        pass  # saves are synchronous

    def close(self) -> None:
        pass
''',
    },
}

TESTS = '''\
"""jaxyard's conformance kit over this package's components: one test per component and check.

Run ``python -m pytest -q`` once the package is installed (the kit finds the components through
its entry point, as ``jaxyard list`` does). Opt a check out with its reason:
``parametrize_with_checks(distribution="$dist", skip={"model:$name": {"check_name": "why"}})``.
"""

from jaxyard.core.kit import parametrize_with_checks


@parametrize_with_checks(distribution="$dist")
def test_conformance(entry, check, tmp_path):
    check(entry, tmp_path)
'''

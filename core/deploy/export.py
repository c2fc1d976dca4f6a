"""``jaxyard export``: a run's trained model as a file that runs without jaxyard.

Three formats, each one file written atomically (a temporary file, then renamed), by default to
``RUN_DIR/export/model.<jax|onnx|safetensors>``:

- ``jax``: the model's inference function serialized with ``jax.export`` (StableHLO, lowered for
  CPU and CUDA, or for this machine's platform alone when a layer has no lowering for both: echoed,
  and recorded in the sidecar's ``platforms``), the trained weights inside as constants, the batch size symbolic. Anyone with
  jax calls it: ``jax.export.deserialize(blob).call(x)``. A JSON sidecar, ``model.jax.json``,
  says what it reads and gives (shapes, dtypes), the task, the run, the checkpoint step and the
  versions; ``jaxyard predict`` reads the pair.
- ``onnx``: the same function converted by ``jax2onnx`` (extra ``jaxyard[onnx]``), input ``x``
  with a symbolic batch ``B``, output ``output``; checked with ``onnxruntime`` against jaxyard's
  own outputs on real rows before it is written (a file that disagrees is refused).
- ``safetensors``: the weights alone, named by their path in the model (``hidden.0.kernel``),
  with the model's name and parameters as metadata (``format`` ``flax``, as Hugging Face tools
  read it; ``jaxyard.format`` ``flax.nnx``): for loading into code that builds the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from jaxyard.core.deploy.loading import Trained, load_trained
from jaxyard.core.errors import MissingExtra, UsageError, one_line
from jaxyard.core.store.rundir import write_atomic
from jaxyard.core.train.events import Echo, silent

FORMATS = {"jax": ".jax", "onnx": ".onnx", "safetensors": ".safetensors"}
EXPORT_DIR = "export"  # in the run directory
SIDECAR = ".json"  # appended to a jax artifact's name: model.jax -> model.jax.json
KIND = "jaxyard.jax-export"  # the sidecar's "format"
PLATFORMS = ("cpu", "cuda")  # a jax artifact runs on either (jax picks the one it runs on)
ONNX_TOLERANCE = 1e-4  # the ONNX file's largest difference from jaxyard's outputs, relative to their largest value (at least 1)
INPUT, OUTPUT = "x", "output"


@attrs.frozen
class Export:
    """What :func:`export` wrote."""

    path: Path
    format: str
    size: int  # bytes
    trained: str  # the run and checkpoint, described
    step: int
    sidecar: Path | None = None  # the jax artifact's
    difference: float | None = None  # onnx: the largest difference from jaxyard's outputs on the checked rows
    rows: int = 0  # onnx: the rows checked
    platforms: tuple[str, ...] = ()  # jax: the platforms the artifact runs on


def default_out(run_dir: str | os.PathLike, fmt: str) -> Path:
    """Where :func:`export` writes without ``out``: ``RUN_DIR/export/model.<format>``."""
    return Path(run_dir) / EXPORT_DIR / f"model{FORMATS[fmt]}"


def sidecar_of(artifact: str | os.PathLike) -> Path:
    """A jax artifact's sidecar: ``model.jax`` -> ``model.jax.json``."""
    return Path(f"{artifact}{SIDECAR}")


def export(run_dir: str | os.PathLike, *, format: str = "jax", out: str | os.PathLike | None = None,
           checkpoint: str = "latest", weights: str = "model", registry=None, echo: Echo = silent) -> Export:
    """Export a run's model at a checkpoint (read as ``eval`` reads it) to ``out``.

    :param format: ``jax``, ``onnx`` or ``safetensors`` (see the module's docstring).
    :param out: the file to write (default :func:`default_out`; its folder is made).
    :param checkpoint, weights: as :func:`jaxyard.core.train.engine.evaluate` takes them.
    """
    if format not in FORMATS:
        raise UsageError(f"--format {format!r}: expected {', '.join(FORMATS)}")
    path = Path(out) if out is not None else default_out(run_dir, format)
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; name the file to write (such as {path / ('model' + FORMATS[format])})")
    if format == "onnx":
        _onnx_modules()  # a missing extra said before anything is built
    trained = load_trained(run_dir, checkpoint=checkpoint, weights=weights, registry=registry, echo=echo)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "jax":
        blob, meta = jax_artifact(trained)
        meta["sha256"] = hashlib.sha256(blob).hexdigest()
        write_atomic(path, blob)
        sidecar = sidecar_of(path)
        write_atomic(sidecar, json.dumps(meta, indent=2) + "\n")
        platforms = tuple(meta["platforms"])
        if platforms == PLATFORMS:
            echo(f"Runs on: {' or '.join(platforms)} (jax picks the one it runs on)")
        else:
            echo(f"Runs on: {', '.join(platforms)} only (the model has no lowering for {' and '.join(PLATFORMS)} together: "
                 f"{meta.get('platforms_note', 'see the error of jax.export')}); export on a machine of the platform to run on")
        return Export(path, format, len(blob), trained.describe(), trained.step, sidecar=sidecar, platforms=platforms)
    if format == "onnx":
        blob, difference = onnx_artifact(trained)
        write_atomic(path, blob)
        return Export(path, format, len(blob), trained.describe(), trained.step, difference=difference, rows=len(trained.sample))
    blob = safetensors_artifact(trained)
    write_atomic(path, blob)
    return Export(path, format, len(blob), trained.describe(), trained.step)


# -- the formats ------------------------------------------------------------------------------


def jax_artifact(trained: Trained) -> tuple[bytes, dict[str, Any]]:
    """The serialized ``jax.export`` of the model's function, and its sidecar (without its sha256)."""
    import jax

    function = jax.jit(trained.function())
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, *trained.row_shape), trained.row_dtype)
    platforms: tuple[str, ...] = PLATFORMS
    note = None
    try:
        exported = jax.export.export(function, platforms=platforms)(spec)
    except Exception as err:  # an op without a lowering for every platform: the one this machine runs
        note = one_line(err, 200, first_line=True)
        platforms = (jax.export.default_export_platform(),)
        try:
            exported = jax.export.export(function, platforms=platforms)(spec)
        except Exception as err:
            raise UsageError(f"model {trained.config.model.name!r} cannot be exported by jax.export with a symbolic batch size "
                             f"(inputs {_shape_text(('b', *trained.row_shape))}): {one_line(err, 300, first_line=True)}") from err
    outputs = [{"name": OUTPUT if len(exported.out_avals) == 1 else f"{OUTPUT}_{i}",
                "shape": [_dim(d) for d in aval.shape], "dtype": str(aval.dtype)} for i, aval in enumerate(exported.out_avals)]
    meta = {
        "format": KIND,
        "format_version": 1,
        "input": {"name": INPUT, "shape": ["b", *trained.row_shape], "dtype": str(trained.row_dtype)},
        "outputs": outputs,
        "platforms": list(platforms),
        **({} if note is None else {"platforms_note": note}),
        **describe(trained),
    }
    return bytes(exported.serialize()), meta


def onnx_artifact(trained: Trained) -> tuple[bytes, float]:
    """The model's function as an ONNX file, and its largest difference from jaxyard's outputs on
    ``trained.sample`` (refused beyond :data:`ONNX_TOLERANCE`)."""
    import jax

    jax2onnx, onnxruntime = _onnx_modules()
    function = trained.function()
    (batch,) = jax.export.symbolic_shape("B")
    spec = jax.ShapeDtypeStruct((batch, *trained.row_shape), trained.row_dtype)
    name = trained.config.model.name
    try:
        with warnings.catch_warnings():  # its plugins read flax's deprecated Variable.value: nothing a user can act on
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"jax2onnx\.")
            proto = jax2onnx.to_onnx(function, [spec], model_name=f"jaxyard_{name}", input_names=[INPUT], output_names=[OUTPUT])
    except Exception as err:
        drawn = _random_ops(function, spec)
        cause = f"it draws random numbers when called ({', '.join(drawn)}), which ONNX cannot hold; " if drawn else ""
        raise UsageError(f"jax2onnx {_version('jax2onnx')} cannot convert model {name!r}: {cause}"
                         f"{one_line(err, 300, first_line=True)} (--format jax exports every model)") from err
    for key, value in describe(trained).items():
        proto.metadata_props.add(key=f"jaxyard.{key}", value=json.dumps(value))
    blob = proto.SerializeToString()
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run(None, {INPUT: trained.sample})[0], np.float64)
    want = np.asarray(jax.jit(function)(trained.sample), np.float64)
    difference = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if not difference <= ONNX_TOLERANCE * max(1.0, float(np.max(np.abs(want)))):
        raise UsageError(f"the ONNX conversion of model {name!r} gives outputs {_shape_text(got.shape)} differing from jaxyard's "
                         f"{_shape_text(want.shape)} by {difference:.3g} (more than {ONNX_TOLERANCE:g}) on {len(trained.sample)} "
                         f"rows of {trained.run_dir}: not written (--format jax exports the model exactly)")
    return blob, difference


def safetensors_artifact(trained: Trained) -> bytes:
    """The model's arrays (its parameters and any other state but random keys) by path, with metadata."""
    from flax import nnx

    from jaxyard.core.deploy.safetensors import encode, tensor_names

    tensors = tensor_names(nnx.state(trained.model, nnx.Not(nnx.RngState)))
    about = describe(trained)
    metadata = {"format": "flax", "jaxyard.format": "flax.nnx", "model": about["model"]["name"], "model_params": json.dumps(about["model"]["params"]),
                **{key: json.dumps(about[key]) for key in ("task", "context", "source", "versions")}}
    return encode(tensors, metadata)


# -- shared ------------------------------------------------------------------------------------


def describe(trained: Trained) -> dict[str, Any]:
    """What every artifact says about where it comes from: the task and model (names, parameters),
    the context the model was built with, the run and checkpoint, the versions."""
    import jax

    from jaxyard.core.registry.params import to_plain

    config = trained.config
    return {
        "task": {"name": config.task.key, "params": _jsonable(to_plain(config.task.params))},
        "model": {"name": config.model.key, "params": _jsonable(to_plain(config.model.params))},
        "context": _jsonable(trained.context),
        "source": {"run_dir": str(trained.run_dir.resolve()), "step": trained.step, "epoch": trained.epoch,
                   "checkpoint": trained.checkpoint, "weights": trained.weights},
        "versions": {"jaxyard": _version("jaxyard"), "jax": jax.__version__},
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` less those JSON cannot hold (a context may carry objects; tuples become lists)."""
    out = {}
    for key, value in values.items():
        value = value.item() if isinstance(value, np.generic) else value
        try:
            out[str(key)] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return out


def _onnx_modules():
    try:
        import jax2onnx
    except ImportError:
        raise MissingExtra("jaxyard export --format onnx", "onnx", "jax2onnx") from None
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtra("jaxyard export --format onnx", "onnx", "onnxruntime") from None
    return jax2onnx, onnxruntime


def _random_ops(function, spec) -> list[str]:
    """The random-number primitives ``function`` uses (a layer drawing a key when called)."""
    import jax

    try:
        jaxpr = jax.make_jaxpr(function)(spec)
    except Exception:
        return []
    found: set[str] = set()

    def walk(inner):
        for eqn in inner.eqns:
            if eqn.primitive.name.startswith("random_"):
                found.add(eqn.primitive.name)
            for value in eqn.params.values():  # the jaxprs of scans, conds, pjits
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    return sorted(found)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _dim(d) -> int | str:
    return d if isinstance(d, int) else str(d)


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"

"""A trained model read back from a run directory, as ``jaxyard eval`` reads it: the run's config
(checked against the checkpoint's), its components built, the checkpoint restored.

What ``export`` and ``predict`` share: the model in evaluation mode (the trained weights or their
moving average), the task, what the model factory was told about the data (``context``) and a
few real rows of the model's input (the shape and dtype an artifact is fixed to, and what an
ONNX file is verified on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from jaxyard.core.errors import UsageError
from jaxyard.core.train.events import Echo, silent

#: rows of the test split (else the training split) kept as the model's example input
SAMPLE_ROWS = 8


@attrs.frozen
class Trained:
    """A run's model at one checkpoint, ready for inference (:func:`load_trained`)."""

    run_dir: Path
    config: Any  # the RunConfig the checkpoint was trained with
    model: Any  # an nnx.Module in evaluation mode
    task: Any
    context: dict[str, Any]  # what the model factory was told (input_shape, num_classes, ...)
    sample: np.ndarray  # real rows of the model's input: (SAMPLE_ROWS or fewer, *row shape)
    step: int
    epoch: int | None
    checkpoint: str  # as asked: latest, best or a step
    weights: str  # model or ema

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row of the model's input."""
        return tuple(self.sample.shape[1:])

    @property
    def row_dtype(self) -> np.dtype:
        return self.sample.dtype

    def function(self):
        """The model as a pure function of a batch of inputs (its weights closed over: the
        constants of an exported program)."""
        from flax import nnx

        graphdef, state = nnx.split(self.model)
        return lambda x: nnx.merge(graphdef, state, copy=True)(x)  # copy: a layer drawing random numbers mutates its own

    def describe(self) -> str:
        """``RUN_DIR at checkpoint step 14 (epoch 2, latest)``, with ``, averaged weights`` for ema."""
        what = ", averaged weights" if self.weights == "ema" else ""
        return f"{self.run_dir} at checkpoint step {self.step} (epoch {self.epoch}, {self.checkpoint}{what})"


def load_trained(run_dir: str | os.PathLike, *, checkpoint: str = "latest", weights: str = "model", registry=None,
                 echo: Echo = silent) -> Trained:
    """Read a run's model at a checkpoint exactly as :func:`jaxyard.core.train.engine.evaluate` does
    (one device; config.toml refused where it differs from the checkpoint's configuration),
    writing nothing.

    :param checkpoint: ``latest``, ``best`` (by the run's monitor) or a step number.
    :param weights: ``model`` (the trained weights) or ``ema`` (their moving average, a run with
        ``run.ema_decay``).
    """
    from jaxyard.core.train import steps
    from jaxyard.core.train.averaging import use_ema
    from jaxyard.core.train.engine import read_checkpoint

    built, restored = read_checkpoint(run_dir, checkpoint=checkpoint, weights=weights, registry=registry, echo=echo)
    config = built.config
    model, optimizer = steps.merged(built.eval_graphdef, built.state)
    if weights == "ema":
        use_ema(model, optimizer)
    model.eval()
    return Trained(Path(run_dir), config, model, built.task, dict(built.context), sample_inputs(config, built), restored.step,
                   restored.meta.get("epoch"), str(checkpoint), weights)


def sample_inputs(config, built, rows: int = SAMPLE_ROWS) -> np.ndarray:
    """The model's input for the first ``rows`` rows of the test split (the training split's when
    the test split is empty), as the model is called with them (the task's ``inputs``)."""
    import jax

    from jaxyard.core.train.build import first_batch
    from jaxyard.core.train.data import Dataset, as_batch

    batch = None
    for split in ("test", "train"):
        if isinstance(built.data, Dataset):
            whole = as_batch(getattr(built.data, split))
            if built.sizes.get(split):
                batch = jax.tree.map(lambda a: a[:rows], whole)
        else:
            batch = first_batch(config, built.data, split, rows)
        if batch is not None:
            break
    if batch is None:
        raise UsageError(f"loader {config.loader.name!r} gives no test or training rows to read the model's input shape from")
    inputs = np.asarray(built.task.inputs(batch))
    return inputs[:rows]

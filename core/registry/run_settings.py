"""The ``[run]`` table: its settings, their defaults and checks, and the keys renamed since a release.

Its own module so that reading a file (:mod:`jaxyard.core.registry.settings`) can check a
``[run]`` table without the resolved configuration (:mod:`jaxyard.core.registry.config`),
which reads files.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

from jaxyard.core.errors import UsageError
from jaxyard.core.metrics import EMA
from jaxyard.core.registry import params as P


def _devices(instance, attribute, value) -> None:
    if not (value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
        raise ValueError(f"expected all or a positive number of devices, got {value!r}", attribute, None, value)


def _monitor(instance, attribute, value) -> None:
    name = value.removesuffix(EMA) if isinstance(value, str) else ""
    split, _, metric = name.partition("_")
    if split not in ("val", "train") or not metric.isidentifier():
        raise ValueError(
            f"expected val_NAME or train_NAME (optionally ending {EMA}) for a metric of the task, e.g. val_loss; got {value!r}",
            attribute, None, value,
        )


#: run.precision's choices: the dtype the forward and backward pass compute in (parameters,
#: optimizer state, the loss and the metric sums stay float32 in both)
PRECISIONS = ("float32", "bf16")


def _precision(instance, attribute, value) -> None:
    if value not in PRECISIONS:
        raise ValueError(
            f"expected float32 or bf16 (bfloat16 compute, float32 parameters), got {value!r}: e.g. --set run.precision=bf16",
            attribute, None, value,
        )


@attrs.frozen
class RunSettings:
    """The ``[run]`` table: which components to use and how to train."""

    task: str = P.param("classification", "what is trained: the objective and its metrics (`jaxyard list tasks`)")
    optimizer: str = P.param("adam", "optimizer to use (`jaxyard list optimizers`)")
    scheduler: str = P.param("cosine", "learning-rate schedule to use")
    model: str = P.param("mlp", "model to train")
    loader: str = P.param("synthetic", "data set to train on")
    checkpointer: str = P.param("orbax", "how checkpoints are saved")
    epochs: int = P.param(10, "number of passes over the training split (unless run.steps is set)", validator=v.ge(1))
    steps: int = P.param(
        0, "train this many batches instead of run.epochs (0: epochs); need not be a whole number of epochs", validator=v.ge(0),
    )
    eval_every: int = P.param(
        0, "validate (and may checkpoint, stop early, log) every N batches (0: once an epoch); a round of N steps is what "
        "run.save_every and run.patience count", validator=v.ge(0),
    )
    shuffle: bool = P.param(True, "shuffle the training split each epoch (false: the loader's order, every epoch)")
    batch_size: int = P.param(32, "examples per training step", validator=v.ge(1))
    learning_rate: float = P.param(1e-3, "peak learning rate, given to the schedule", validator=v.gt(0.0), traced=True)
    warmup_steps: int = P.param(
        100, "linear warmup from 0 to the peak rate, before the schedule (not `constant`'s: it is constant)", validator=v.ge(0)
    )
    clip_norm: float = P.param(0.0, "clip gradients to this global norm (0: off)", validator=v.ge(0.0))
    seed: int = P.param(0, "seeds the initialisation, dropout and the shuffle", validator=[v.ge(0), v.lt(2**31)])
    drop_last: bool = P.param(False, "drop the last partial batch instead of padding and masking it")
    val_fraction: float = P.param(
        0.1, "for a loader that gives no validation split: the share of its training rows held out as one (chosen by a fixed "
        "seed, the same for every run.seed; 0 refuses such a loader)", validator=[v.ge(0.0), v.lt(1.0)],
    )
    eval_batch_size: int = P.param(1000, "examples per evaluation step (speed only)", validator=v.ge(1))
    save_every: int = P.param(5, "save a checkpoint every N epochs (the last epoch is always saved)", validator=v.ge(1))
    patience: int = P.param(0, "stop after this many epochs without improvement of `monitor` (0: off)", validator=v.ge(0))
    min_delta: float = P.param(0.0, "smallest change of `monitor` that counts as an improvement", validator=v.ge(0.0))
    monitor: str = P.param(
        "val_loss",
        "the metric that makes an epoch best, for early stopping, checkpoint retention and `eval --checkpoint best`: "
        "val_NAME or train_NAME (NAME_ema too) for a metric of the task, which says which way it improves",
        validator=_monitor,
    )
    accumulate_steps: int = P.param(
        1, "gradient accumulation: average the gradients of N batches per optimizer update (effective batch N x batch_size)",
        validator=v.ge(1),
    )
    ema_decay: float = P.param(
        0.0, "keep an exponential moving average of the weights with this decay, e.g. 0.999 (0: off); `eval --weights ema`",
        validator=[v.ge(0.0), v.lt(1.0)],
    )
    precision: str = P.param(
        "float32", "bf16: the forward and backward pass compute in bfloat16; the parameters, the optimizer state, the loss "
        "and the metric sums stay float32 (evaluation computes as training does)", validator=_precision,
    )
    devices: int | str = P.param(
        "all", "local devices to train on: all, or N (a 1-D mesh: the batch is split over them)", validator=_devices,
        converter=lambda v: int(v) if isinstance(v, str) and v.strip().isdigit() else v,
    )
    shard_params: bool = P.param(False, "split the parameters and optimizer state over the devices too (ZeRO-3/FSDP style)")
    curves: bool = P.param(True, "plot the training curves to training_curves.png when the run ends (a sweep's trials: off)")
    profile: bool = P.param(False, "write a jax.profiler trace of the second epoch to the run directory's profile/")
    keep_latest: int = P.param(3, "checkpoints: keep the newest N", validator=v.ge(1))
    keep_best: int = P.param(1, "checkpoints: also keep the N best by `monitor`", validator=v.ge(0))
    loggers: tuple[str, ...] = P.param(("jsonl",), "experiment loggers (`jaxyard list loggers`); `--logger NAME` adds one")
    runs_dir: str = P.param(
        "runs", "directory under which each run (and sweep) gets a directory of its own; `--out DIR` names that directory instead"
    )


#: ``[run]`` keys renamed since a release: files (an old run's config.toml) still read
RENAMED_RUN_KEYS = {"out": "runs_dir"}


def renamed(table: dict[str, Any]) -> dict[str, Any]:
    """A ``[run]`` table with its old key names replaced (the new name wins if both are set)."""
    out = {RENAMED_RUN_KEYS.get(k, k): v for k, v in table.items() if k not in RENAMED_RUN_KEYS}
    for old, new in RENAMED_RUN_KEYS.items():
        if old in table:
            out.setdefault(new, table[old])
    return out


def check_run_table(table: dict[str, Any]) -> None:
    """Check a ``[run]`` table's keys and value types (used when reading files)."""
    table = renamed(table)
    types = P.field_types(RunSettings)
    valid = [f.name for f in attrs.fields(RunSettings)]
    for key, value in table.items():
        if key not in types:
            raise UsageError(P.unknown_key_message("run", key, valid))
        P.coerce(value, types[key], where=f"run.{key}")

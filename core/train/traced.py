"""Hyperparameters as inputs of the compiled program, and the programs runs can share.

A parameter declared ``jaxyard.param(..., traced=True)`` (the peak learning rate, Adam's betas, a
schedule's decay rate) may reach the compiled epoch as an argument instead of a constant. Runs
whose configurations differ only in such values and in the seed form one *static group*: they
share one compiled program. A single ``run`` traces nothing (its numbers are those of a program
with every value constant); a sweep traces what it varies.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from jaxyard.core.registry import params as P

#: ``[run]`` keys that never reach the compiled programs: runs differing only in them share one
PROGRAM_FREE = frozenset({
    "seed", "out", "runs_dir", "save_every", "patience", "min_delta", "monitor", "profile", "keep_latest", "keep_best", "loggers",
    "checkpointer", "curves",
})
TUNED_KINDS = ("optimizer", "scheduler", "task")  # whose traced parameters shape the update


def traceable(config) -> dict[str, float]:
    """Every ``traced=True`` parameter of ``config`` (the run's, its optimizer's, its scheduler's
    and its task's), by dotted name (``run.learning_rate``, ``optimizer.b2``), with its value."""
    from jaxyard.core.registry.run_settings import RunSettings

    out = {f"run.{name}": getattr(config.run, name) for name in P.traced_fields(RunSettings)}
    for kind in TUNED_KINDS:
        params = getattr(config, kind).params
        out.update({f"{kind}.{name}": getattr(params, name) for name in P.traced_fields(type(params))})
    return out


def with_values(config, values: dict[str, Any]):
    """``config`` with the named hyperparameters replaced (by traced scalars). Validators are
    bypassed (they checked the concrete values), without attrs' process-wide switch: threads
    building other configurations meanwhile keep theirs."""
    changes: dict[str, Any] = {}
    run = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("run.")}
    if run:
        changes["run"] = replaced(config.run, run)
    for kind in TUNED_KINDS:
        own = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f"{kind}.")}
        if own:
            choice = getattr(config, kind)
            changes[kind] = attrs.evolve(choice, params=replaced(choice.params, own))
    return attrs.evolve(config, **changes)


def replaced(instance, values: Mapping[str, Any]):
    """A copy of a frozen attrs ``instance`` with ``values`` set, no validator run."""
    out = copy.copy(instance)
    for name, value in values.items():
        object.__setattr__(out, name, value)
    return out


def group_key(config, traced: Iterable[str]) -> str:
    """What the compiled programs of ``config`` depend on: its configuration without the seed,
    the values of ``traced`` and the settings no program reads. Equal keys, one program."""
    data = config.to_dict()
    run = {k: v for k, v in data.pop("run").items() if k not in PROGRAM_FREE}
    for name in traced:
        section, key = name.split(".", 1)
        if section == "run":
            run[key] = "<input>"
        else:
            for table in data[section].values():
                table[key] = "<input>"
    data.pop("checkpointer", None)
    data.pop("logger", None)
    return json.dumps({"run": run, **data}, sort_keys=True, default=str)


class Programs:
    """Compiled programs kept across runs in one process (a sweep's trials).

    ``traced`` names the hyperparameters that are inputs (those a configuration does not have
    are constants for it). ``compiles`` counts the training programs compiled: one per static
    group.
    """

    def __init__(self, traced: Iterable[str] = ()):
        self.traced = tuple(dict.fromkeys(traced))
        self.compiles = 0
        self._cache: dict[Any, Any] = {}
        self._lock = threading.RLock()  # runs in threads (--vectorize) make each program once

    def get(self, key, make: Callable[[], Any]):
        """The program cached under ``key``, made (once) by ``make()``."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key) -> bool:
        return key in self._cache

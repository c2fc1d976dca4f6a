"""The records the registry holds: one per component, one per plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

KINDS = ("task", "optimizer", "scheduler", "model", "loader", "checkpointer", "logger")
CHOSEN = KINDS[:6]  # a run uses exactly one of each of these; loggers: any number (run.loggers)
HOOKS = {kind: f"jaxyard_register_{kind}s" for kind in KINDS}
#: the keyword arguments each kind's factory is called with (see core/registry/hookspecs.py)
FACTORY_KEYWORDS = {
    "task": (),
    "optimizer": ("learning_rate",),
    "scheduler": ("learning_rate", "decay_steps"),
    "model": ("input_shape", "rngs"),  # and each key of the task's context it names (CONTEXT_KEYWORDS)
    "loader": ("seed",),
    "checkpointer": ("directory",),
    "logger": ("directory",),
}
#: keys of the built-in tasks' contexts a model factory may name, each passed when the task gives it:
#: ``num_outputs`` (every task: the output width it reads), ``num_classes`` (a classification's; any other
#: task's ``num_outputs`` for a factory naming it alone, as 0.2's did), ``vocab_size``, ``seq_len``. A task
#: of a plugin may add others: a factory naming one gives it a default, or takes ``**context``.
CONTEXT_KEYWORDS = ("num_outputs", "num_classes", "vocab_size", "seq_len")


class RegisterFn(Protocol):
    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        params: type | None = None,
        description: str | None = None,
    ) -> None: ...


@attrs.frozen
class Entry:
    """A registered component: what ``list`` and ``show`` print and what ``run`` builds."""

    kind: str
    name: str
    description: str
    params: type
    factory: Callable[..., Any] = attrs.field(repr=False)
    plugin: str
    source: str = "builtin"  # "builtin", "entry point" or "local"
    module: str = ""
    distribution: str | None = None
    version: str | None = None
    ref: str = ""  # the name that selects it: ``name``, or ``qualified`` when the bare name is another's

    @property
    def qualifier(self) -> str:
        """``jaxyard`` for built-ins, the entry point's name, or a local module's (file's) name."""
        if self.source == "builtin":
            return "jaxyard"
        if self.source == "local":
            return self.module.rsplit("/", 1)[-1].removesuffix(".py") if self.module.endswith(".py") else self.module
        return self.plugin

    @property
    def qualified(self) -> str:
        return f"{self.qualifier}:{self.name}"

    @property
    def selector(self) -> str:
        return self.ref or self.name

    def create(self, params: Any, **context: Any) -> Any:
        """Build the component (this is where heavy libraries get imported)."""
        return self.factory(params, **context)

    def origin(self) -> str:
        """Where it comes from, for messages: ``plugin example (jaxyard-example-plugin 0.1.0)``."""
        dist = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.plugin}{dist}"

    def how_to_load(self) -> str:
        """What a user must do to have this component again in another session."""
        if self.source == "local":
            return f"add --plugin {self.module}"
        if self.source == "entry point" and self.distribution:
            return f"pip install {self.distribution}"
        return "it is built into jaxyard"


@attrs.frozen
class PluginInfo:
    """A plugin that was loaded, or that failed to load (``error`` set)."""

    name: str
    source: str  # "builtin", "entry point" or "local"
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: tuple[str, ...] = ()
    components: tuple[str, ...] = ()  # "kind:name"
    error: str | None = None
    warnings: tuple[str, ...] = ()
    disabled: bool = False  # blocked by --disable, $JAXYARD_DISABLE_PLUGINS or [plugins] disabled

    @property
    def ok(self) -> bool:
        return self.error is None

    def label(self) -> str:
        dist = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"{self.name}{dist}"

"""The house: no import cycle (lazy imports included), modules of a readable size, and the
paths of jaxyard 0.1 still importing as the modules they became, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import grimp
import pytest

from jaxyard.core import moved

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 600
#: modules allowed over MAX_LINES, and why
LONG = {
    "cli.py": "click declarations and help texts for every command: the CLI's own job",
}


def _cycles(adjacent: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in adjacent[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(adjacent):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_lazy_imports_included():
    """Imports inside functions count: a cycle broken by a lazy import is still a cycle.
    Annotation-only imports (under TYPE_CHECKING) are not imports at run time."""
    graph = grimp.build_graph("jaxyard", exclude_type_checking_imports=True, cache_dir=None)
    adjacent = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert len(adjacent) > 40, sorted(adjacent)  # the whole package was found
    assert _cycles(adjacent) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_modules_are_of_a_readable_size():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in [*ROOT.glob("core/**/*.py"), *ROOT.glob("plugins/**/*.py"), ROOT / "cli.py"]
    }
    over = {path: n for path, n in sizes.items() if n > MAX_LINES and path not in LONG}
    assert not over, f"over {MAX_LINES} lines (split it by what it holds, or say why in LONG): {over}"


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_old_paths_are_the_new_modules_and_warn(old):
    new = importlib.import_module(moved.MOVED[old])
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is new and module.__spec__.name == moved.MOVED[old]  # the module keeps its own spec
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert messages and moved.MOVED[old] in messages[0] and old in messages[0], messages
    assert caught[0].filename == __file__  # the warning points at the import that needs changing


def test_jaxyard_testing_is_the_kit_without_a_warning():
    from helpers import probe_imports

    steps = ["import warnings; warnings.simplefilter('error')",
             "import jaxyard.testing as t, jaxyard.core.kit as k; assert t is k, (t, k)",
             "from jaxyard.testing import parametrize_with_checks, check_component"]
    *_, imported = probe_imports(steps, heavy=("jax", "flax", "optax", "orbax"))
    assert imported["heavy"] == []


def test_a_name_that_never_existed_is_still_unknown():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("jaxyard.core.nonexistent")


def test_the_old_registry_modules_names_still_resolve_and_warn():
    """``jaxyard.core.registry`` was a module in 0.1 and is the registry package now."""
    import jaxyard.core.registry as registry
    from jaxyard.core.registry import entries, loading

    with pytest.warns(DeprecationWarning, match="jaxyard.core.registry.entries.FACTORY_KEYWORDS"):
        assert registry.FACTORY_KEYWORDS is entries.FACTORY_KEYWORDS
    with pytest.warns(DeprecationWarning, match="registry.loading.unknown_name_message"):
        assert registry.unknown_name_message is loading.unknown_name_message
    assert registry.build_registry is loading.build_registry
    with pytest.raises(AttributeError):
        registry.no_such_name  # noqa: B018

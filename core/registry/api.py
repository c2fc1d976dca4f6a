"""The plugin API: its version, the jaxyard a plugin says it needs, and the record of its signatures.

``PLUGIN_API`` is the release (major.minor) whose hook specifications, factory keywords and
contracts this jaxyard implements. A plugin package says which jaxyard it was written for the
ordinary way, as a dependency (``dependencies = ["jaxyard>=0.2,<0.3"]``, which its wheel records
as ``Requires-Dist``). The registry reads that requirement before importing the plugin
(:func:`declared_requirement`, :func:`unmet_requirement`), and names it when the plugin breaks a
contract (:func:`written_for`).

The API's surface (every hook's signature, the ``register`` callback, the keywords each kind's
factory receives and the classes plugins implement or return) is recorded in a JSON snapshot
stamped with the version it was recorded at. tests/registry/test_plugin_api.py compares the live surface
(:func:`surface`) with it (:func:`compare`); :func:`record` re-records it only for a new version
that has a CHANGELOG.md section, so that no change to the API ships unannounced.

Nothing here imports jax; ``packaging`` is imported only when a requirement is read.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core.errors import UsageError
from jaxyard.core.registry import hookspecs
from jaxyard.core.registry.entries import FACTORY_KEYWORDS, RegisterFn

#: the release whose plugin API this jaxyard implements; a change to the recorded surface sets it
#: to the major.minor of the release that makes the change
PLUGIN_API = "0.4"
#: the installed package's distribution and import name ("jaxyard")
PACKAGE = __package__.partition(".")[0]
CHANGELOG = "CHANGELOG.md"


# --- what a plugin declares ----------------------------------------------------------------------


def declared_requirement(dist: Any) -> str | None:
    """The version specifier on jaxyard that distribution ``dist`` declares (``"<0.3,>=0.2"``;
    ``""`` for a bare ``jaxyard``), or None when it declares none.

    Requirements of an extra (``jaxyard[sweep]; extra == "test"``) do not count: they are not
    what the plugin needs to run.
    """
    requires = getattr(dist, "requires", None) or ()
    if not requires:
        return None
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    for text in requires:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue  # pip would have refused it; not ours to report
        if canonicalize_name(requirement.name) != PACKAGE:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        return str(requirement.specifier)
    return None


def unmet_requirement(specifier: str | None, version: str | None, *, distribution: str | None = None) -> str | None:
    """Why jaxyard ``version`` does not satisfy ``specifier`` (one line naming both and the two
    ways out), or None when it does, when nothing is declared or the version is unknown."""
    if not specifier or not version:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        if SpecifierSet(specifier).contains(Version(version), prereleases=True):
            return None
    except (InvalidSpecifier, InvalidVersion):
        return None
    upgrade = f"upgrade it (pip install -U {distribution})" if distribution else "upgrade it"
    return f"requires jaxyard{specifier} but this is jaxyard {version}; {upgrade} or pin jaxyard (pip install 'jaxyard{specifier}'); see {CHANGELOG}"


def written_for(specifier: str | None, version: str | None) -> str:
    """What a plugin's contract failure adds: the jaxyard it was written for (when its package
    declares it), this one, and where the changes are listed."""
    this = f"jaxyard {version} (plugin API {PLUGIN_API})" if version else f"plugin API {PLUGIN_API}"
    if specifier:
        return f"it was written for jaxyard{specifier} and this is {this}: see {CHANGELOG}"
    return f"this is {this}: see {CHANGELOG} for what changed"


# --- the recorded surface ---------------------------------------------------------------------------


class _Text(str):
    """An annotation written as its source text (``inspect`` would quote a plain string)."""

    def __repr__(self) -> str:
        return str(self)


def signature_text(func: Any, *, method: bool = False) -> str:
    """``func``'s signature as its source spells it, without ``self`` for a ``method``:
    ``(register: RegisterFn) -> None``."""
    signature = inspect.signature(func)
    parameters = list(signature.parameters.values())[1 if method else 0 :]

    def text(annotation: Any) -> Any:
        if annotation is inspect.Parameter.empty:
            return annotation
        return _Text(annotation if isinstance(annotation, str) else inspect.formatannotation(annotation))

    parameters = [p.replace(annotation=text(p.annotation)) for p in parameters]
    return str(signature.replace(parameters=parameters, return_annotation=text(signature.return_annotation)))


def class_surface(cls: type) -> dict[str, str]:
    """What a plugin relies on of ``cls``: an attrs record's fields (``"int = 0"``), or the
    public methods' signatures of a protocol or plain class."""
    if attrs.has(cls):
        out = {}
        for field in attrs.fields(cls):
            annotation = field.type if isinstance(field.type, str) else inspect.formatannotation(field.type)
            required = field.default is attrs.NOTHING
            out[field.name] = annotation if required else f"{annotation} = {_default_text(field.default)}"
        return out
    return {
        name: signature_text(member, method=True)
        for name, member in sorted(vars(cls).items())
        if inspect.isfunction(member) and not name.startswith("_")
    }


def _default_text(default: Any) -> str:
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return f"{getattr(default.factory, '__name__', repr(default.factory))}()"
    if callable(default) and hasattr(default, "__qualname__"):  # a function: its name (a repr holds its address)
        return f"{getattr(default, '__module__', '')}.{default.__qualname__}".lstrip(".")
    return repr(default)


def surface(classes: Mapping[str, type], *, factory_keywords: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The plugin API as plain data, for the snapshot.

    :param classes: the classes plugins implement or return, by public name (the Checkpointer
        and Logger protocols, Restored, Dataset, ...). They live above this layer, so the caller
        (the snapshot test) names them.
    :param factory_keywords: default: :data:`jaxyard.core.registry.entries.FACTORY_KEYWORDS`.
    """
    if factory_keywords is None:
        factory_keywords = FACTORY_KEYWORDS
    hooks = {}
    for name, func in sorted(vars(hookspecs).items()):
        options = getattr(func, f"{hookspecs.PROJECT}_spec", None)
        if options is None:
            continue
        flags = [flag for flag in ("firstresult", "historic") if options.get(flag)]
        hooks[name] = signature_text(func) + "".join(f"; {flag}" for flag in flags)
    return {
        "hooks": hooks,
        "register": signature_text(RegisterFn.__call__, method=True),
        "factory_keywords": {kind: list(keywords) for kind, keywords in factory_keywords.items()},
        "classes": {name: class_surface(cls) for name, cls in sorted(classes.items())},
    }


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def compare(recorded: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """The differences between a recorded surface and the live one, one line each
    (``hooks.jaxyard_on_run_end: (run: Run) -> None became (run: Run, result: RunResult) -> None``)."""
    old, new = _flat(dict(recorded)), _flat(dict(live))
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            lines.append(f"{key} was removed (was {old[key]})")
        elif key not in old:
            lines.append(f"{key} was added: {new[key]}")
        elif old[key] != new[key]:
            lines.append(f"{key}: {old[key]} became {new[key]}")
    return lines


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """A recorded snapshot: ``{"version", "plugin_api", "surface"}``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def changed_message(differences: list[str], snapshot: Mapping[str, Any], command: str) -> str:
    """What a developer reads when the live API differs from its record."""
    shown = "\n  ".join(differences)
    return (
        f"the plugin API differs from its record (made at jaxyard {snapshot.get('version')}, plugin API {snapshot.get('plugin_api')}):\n"
        f"  {shown}\n"
        f"A change to a hook, a factory keyword or a contract is a new release: bump the version in pyproject.toml "
        f"(at least its minor part) and PLUGIN_API in core/registry/api.py, add a {CHANGELOG} entry for it (with a migration "
        f"note when plugins must change), then re-record with: {command}"
    )


def record(
    path: str | Path, live: Mapping[str, Any], *, version: str, changelog: str, plugin_api: str = PLUGIN_API
) -> str:
    """Write ``live`` to the snapshot at ``path``, stamped with ``version`` and ``plugin_api``.

    Refused (a :class:`UsageError` naming the step missing) when the surface changed but the
    version was not bumped past the recorded one, when ``plugin_api`` is not the new version's
    major.minor or is the recorded one, or when ``changelog`` (CHANGELOG.md's text) has no section
    ``## [version]``. An unchanged surface is left as recorded. Returns what was done, one line.
    """
    from packaging.version import Version

    path = Path(path)
    old = load_snapshot(path) if path.is_file() else None
    if old is not None and old.get("surface") == dict(live):
        return f"{path}: the plugin API is as recorded at jaxyard {old.get('version')}; nothing to re-record"
    release = Version(version)
    if old is not None and release <= Version(old["version"]):
        raise UsageError(
            f"the plugin API changed but the version is still {version} (recorded at {old['version']}): "
            f"bump it in pyproject.toml, at least to {release.major}.{release.minor + 1}.0, then re-record"
        )
    major_minor = f"{release.major}.{release.minor}"
    if plugin_api != major_minor or (old is not None and plugin_api == old.get("plugin_api")):
        raise UsageError(
            f"PLUGIN_API is {plugin_api!r} but jaxyard {version} changes the plugin API: a change needs a new minor version "
            f"at least, whose major.minor PLUGIN_API names (set PLUGIN_API = {major_minor!r} in core/registry/api.py, or bump the version)"
        )
    if not re.search(rf"^## \[{re.escape(version)}\]", changelog, re.M):
        raise UsageError(f"{CHANGELOG} has no section '## [{version}]': add one saying what changed for plugin authors, then re-record")
    snapshot = {"version": version, "plugin_api": plugin_api, "surface": dict(live)}
    path.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return f"{path}: recorded the plugin API of jaxyard {version} (plugin API {plugin_api})"

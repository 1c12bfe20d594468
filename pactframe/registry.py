"""The component registry, built from a plugin manager.

    registry = build_registry()
    merger = registry.create("merger", "ties", density=0.2)

Duplicate names are an error naming both providers (pluggy itself would not
notice them); unknown names list what is registered and suggest the closest.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from pactframe.contracts import CONTRACTS, KINDS, Component
from pactframe.errors import (
    ContractError,
    DuplicateComponentError,
    InvalidParameterError,
    PluginError,
    UnknownComponentError,
    short_repr,
    short_text,
)
from pactframe.hookspecs import HOOK_FOR_KIND
from pactframe.plugins import make_plugin_manager, results_by_plugin

#: what a component's ``name`` must be, matched whole (``fullmatch``): snake_case,
#: starting with a lowercase letter (``ties``, ``task_arithmetic``)
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


def is_valid_name(name: object) -> bool:
    """Whether ``name`` can name a component: a string :data:`NAME_PATTERN` matches
    whole (so ``"ties\\n"`` is refused, which ``re.match`` with ``$`` would accept)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


#: mergekit parameter names -> ours, quoted when a component gets one it lacks
MERGEKIT_PARAMETER_HINTS = {
    "density": "'keep_fraction' (ties; for dare it is drop_probability = 1 - density)",
    "lambda": "'scaling'",
    "weight": "a per-model key: models: [{name: ..., path: ..., weight: 0.5}]",
    "int8_mask": "not needed (masks are boolean tensors; remove the key)",
    "rescale": "dare's 'rescale'",
}


@attrs.frozen
class RegistryEntry:
    """One registered component class and where it came from."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str
    distribution: str

    @property
    def provider(self) -> str:
        return f"{self.plugin} ({self.distribution})" if self.distribution else self.plugin


def _distributions(pm: pluggy.PluginManager) -> dict[int, str]:
    out = {}
    for plugin, dist in pm.list_plugin_distinfo():
        meta = getattr(dist, "metadata", None)
        name = meta["name"] if meta is not None else getattr(dist, "project_name", "")
        version = getattr(dist, "version", "")
        out[id(plugin)] = f"{name} {version}".strip()
    return out


class Registry:
    """Lookup of component classes by kind and name."""

    def __init__(self, entries: Iterable[RegistryEntry]) -> None:
        self._entries: dict[str, dict[str, RegistryEntry]] = {kind: {} for kind in KINDS}
        for entry in entries:
            table = self._entries[entry.kind]
            if entry.name in table:
                other = table[entry.name]
                raise DuplicateComponentError(
                    f"Two plugins register a {entry.kind} named {entry.name!r}: "
                    f"{other.provider} and {entry.provider}. Uninstall one, or block one "
                    "with PACTFRAME_BLOCK_PLUGINS=<plugin name>."
                )
            table[entry.name] = entry

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        dists = _distributions(pm)
        entries = []
        for kind in KINDS:
            contract = CONTRACTS[kind]
            for plugin_name, result in results_by_plugin(
                pm, HOOK_FOR_KIND[kind], "classes", ContractError
            ):
                for obj in result:
                    _check_class(obj, kind, contract, plugin_name)
                    entries.append(
                        RegistryEntry(
                            kind,
                            obj.name,
                            obj,
                            plugin_name,
                            dists.get(id(pm.get_plugin(plugin_name)), ""),
                        )
                    )
        return cls(entries)

    # lookup -------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self._table(kind))

    def entries(self, kind: str | None = None) -> list[RegistryEntry]:
        kinds = KINDS if kind is None else (kind,)
        return [self._table(k)[n] for k in kinds for n in sorted(self._table(k))]

    def entry(self, kind: str, name: str) -> RegistryEntry:
        table = self._table(kind)
        if name not in table:
            known = sorted(table)
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownComponentError(
                f"No {kind} named {short_repr(name)} is registered.{hint} Registered {kind}s: "
                f"{', '.join(known) if known else '(none)'}. Run 'pactframe plugins' to list "
                "every component, or install the plugin that provides it."
            )
        return table[name]

    def get(self, kind: str, name: str) -> type[Component]:
        return self.entry(kind, name).cls

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries.get(kind, {})

    # construction -------------------------------------------------------
    def create(self, kind: str, name: str, /, **params: Any) -> Component:
        """Build a component; nested component fields accept a name or a mapping."""
        entry = self.entry(kind, name)
        cls = entry.cls
        fields = {f.name: f for f in attrs.fields(cls)} if attrs.has(cls) else {}
        unknown = sorted(set(params) - {n for n, f in fields.items() if f.init})
        if unknown:
            known = sorted(n for n, f in fields.items() if f.init)
            hints = "".join(
                f" mergekit's {k!r} is {MERGEKIT_PARAMETER_HINTS[k]} here."
                for k in unknown
                if k in MERGEKIT_PARAMETER_HINTS
            )
            raise InvalidParameterError(
                f"{kind} {name!r} (from {entry.provider}) got unknown parameter(s) "
                f"{', '.join(short_text(u, 60) for u in unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''}.{hints} Its parameters are: "
                f"{', '.join(known) or '(none)'}."
            )
        resolved = {}
        for key, value in params.items():
            sub_kind = fields[key].metadata.get("component_kind")
            # null stays null in a component field declared nullable (a MatrixMerger's fallback)
            if sub_kind and (value is not None or not fields[key].metadata.get("nullable")):
                value = self.build(sub_kind, value)
            resolved[key] = value
        try:
            return cls(**resolved)
        except InvalidParameterError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise InvalidParameterError(
                f"{kind} {name!r} (from {entry.provider}) rejected its parameters "
                f"{short_repr(resolved, 300)}: {short_text(str(exc), 300)}"
            ) from exc

    def build(self, kind: str, spec: Any) -> Component:
        """Build from a spec: an instance (returned as is), a name, or ``{"name": ..., ...}``."""
        if isinstance(spec, Component):
            if spec.kind != kind:
                raise ContractError(f"Expected a {kind}, got the {spec.kind} {spec.name!r}.")
            return spec
        if isinstance(spec, str):
            return self.create(kind, spec)
        if isinstance(spec, Mapping):
            if "name" not in spec:
                raise InvalidParameterError(
                    f"A {kind} given as a mapping needs a 'name' key; got keys "
                    f"{short_repr(sorted(map(str, spec)), 300)}."
                )
            if not isinstance(spec["name"], str):
                raise InvalidParameterError(
                    f"A {kind}'s 'name' must be a string (a registered {kind} name); got "
                    f"{short_repr(spec['name'])}."
                )
            odd = [k for k in spec if not isinstance(k, str)]
            if odd:
                raise InvalidParameterError(
                    f"The {kind} {spec['name']!r}: parameter names must be strings; got "
                    f"{short_repr(odd[0])}."
                )
            params = {k: v for k, v in spec.items() if k != "name"}
            return self.create(kind, spec["name"], **params)
        raise InvalidParameterError(
            f"A {kind} must be given as a name or a mapping with 'name'; got {short_repr(spec)}."
        )

    def _table(self, kind: str) -> dict[str, RegistryEntry]:
        if kind not in self._entries:
            raise PluginError(f"Unknown component kind {kind!r}; the kinds are {', '.join(KINDS)}.")
        return self._entries[kind]


def _check_class(obj: Any, kind: str, contract: type[Component], plugin: str) -> None:
    if not (isinstance(obj, type) and issubclass(obj, contract)):
        got = obj.__name__ if isinstance(obj, type) else repr(obj)
        raise ContractError(
            f"Plugin {plugin!r} returned {got} from {HOOK_FOR_KIND[kind]}(), which is not a "
            f"subclass of pactframe.{contract.__name__}. Return {contract.__name__} subclasses."
        )
    name = getattr(obj, "name", None)
    if not is_valid_name(name):
        raise ContractError(
            f"Plugin {plugin!r}: {obj.__name__}.name must be a snake_case string; got {name!r}."
        )
    if getattr(obj, "__abstractmethods__", None):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise ContractError(
            f"Plugin {plugin!r}: {obj.__name__} does not implement {missing} of "
            f"{contract.__name__}."
        )


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """A registry from ``pm``, or from a fresh plugin manager loading all entry points."""
    if pm is None:
        pm = make_plugin_manager()
    return Registry.from_plugin_manager(pm)

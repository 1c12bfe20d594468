"""Merge configurations: YAML (or the same as a dict) -> a frozen :class:`MergeSpec`.

The text is parsed once; every string naming a component becomes a component
instance here, built through the registry, so the pipeline never sees raw
config. Every problem found (unknown keys with a close-match suggestion,
unknown plugin names, bad parameter values, missing files, duplicate task
names...) is collected and reported together in one :class:`ConfigProblems`.
See ``docs/config.md`` for the reference.

    base: ./base
    models:
      - {name: sst2, path: ./ft-sst2, covariance: ./cov-sst2.safetensors}
      - {name: cola, path: ./ft-cola}
    preprocessors: [{name: pact, decomposer: randomized_svd}]
    merger: {name: tsv_m, scaling: 1.0}
    rules:
      - {match: "embed_tokens|lm_head", merger: {name: task_arithmetic, scaling: 0.3},
         preprocessors: []}
    fallback: average
    evaluators: [intrusion_energy]
    device: auto
    compute_dtype: float32
    seed: 0
    output: {dtype: base, shard_size: 2GB}
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pactframe.contracts import (
    Component,
    Evaluator,
    Executor,
    Merger,
    Preprocessor,
    evaluator_level,
)
from pactframe.device import COMPUTE_DTYPES, OUTPUT_DTYPES
from pactframe.errors import (
    ConfigError,
    ConfigProblems,
    PactframeError,
    format_problems,  # noqa: F401  (re-exported: pactframe.config.format_problems)
    short_repr,
    short_text,
)
from pactframe.io.units import parse_size
from pactframe.io.writer import DEFAULT_SHARD_SIZE
from pactframe.nonfinite import DEFAULT_NONFINITE
from pactframe.registry import Registry, build_registry
from pactframe.sources import NONFINITE_POLICIES

TOP_KEYS = (
    "base",
    "models",
    "preprocessors",
    "merger",
    "rules",
    "fallback",
    "evaluators",
    "device",
    "compute_dtype",
    "seed",
    "output",
    "prefetch",
    "vocab",
    "input_dtype",
    "nonfinite",
    "executor",
)
MODEL_KEYS = ("name", "path", "covariance", "weight", "type")
MODEL_TYPES = ("auto", "full", "lora")
VOCAB_MODES = ("base", "union")
INPUT_DTYPE_MODES = ("same", "cast")
RULE_KEYS = ("match", "merger", "preprocessors", "exclude")
OUTPUT_KEYS = ("dtype", "shard_size", "copy_files", "format", "rank")
OUTPUT_FORMATS = ("model", "lora")
DEFAULT_FALLBACK = "average"

# mergekit spellings -> ours, so a mergekit user is told where things moved
MERGEKIT_HINTS = {
    "base_model": "base",
    "merge_method": "merger",
    "dtype": "output.dtype (or compute_dtype)",
    "out_dtype": "output.dtype",
    "parameters": "the merger's own keys, e.g. merger: {name: ties, keep_fraction: 0.2} "
    "(mergekit's density), with per-model weights as models[].weight",
    "slices": "rules (per tensor-name pattern)",
    "tokenizer_source": "vocab: base or vocab: union",
    "model": "path",
    "density": "the merger's keep_fraction (ties) or dare's drop_probability = 1 - density",
}


def spec_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the spec class ``cls`` (``spec_default(MergeSpec,
    "seed")`` is ``0``). Every config default is written once, on the attrs fields of
    :class:`ModelSpec`, :class:`OutputSpec` and :class:`MergeSpec`; the parser fills a
    missing key from there and :meth:`MergeSpec.to_dict` leaves out optional keys that
    still hold it."""
    return attrs.fields_dict(cls)[name].default


@attrs.frozen
class ModelSpec:
    """One fine-tuned model: its task name, checkpoint path, optional covariance file
    and optional weight (for mergers whose method defines per-model weights).
    ``type``: ``auto`` (a folder with ``adapter_config.json`` is a LoRA adapter),
    ``full`` or ``lora`` (see docs/lora.md)."""

    name: str
    path: Path
    covariance: Path | None = None
    weight: float | None = None
    type: str = "auto"


@attrs.frozen
class RecipeSpec:
    """What happens to a tensor: preprocessors in order, then the merger."""

    label: str
    preprocessors: tuple[Preprocessor, ...]
    merger: Merger

    def to_dict(self) -> dict[str, Any]:
        return {
            "preprocessors": [p.to_config() for p in self.preprocessors],
            "merger": self.merger.to_config(),
        }


@attrs.frozen
class RuleSpec:
    """Tensors whose name matches ``match`` (``re.search``) use ``recipe``, or the
    fallback merger when ``exclude`` is true. The first matching rule wins."""

    match: str
    recipe: RecipeSpec | None
    exclude: bool = False

    def matches(self, name: str) -> bool:
        return re.search(self.match, name) is not None


@attrs.frozen
class OutputSpec:
    """``dtype``: ``base`` (each tensor keeps the base model's dtype) or a float dtype;
    ``shard_size`` in bytes; ``copy_files``: copy the base folder's non-weight files;
    ``format``: ``model`` (a full checkpoint) or ``lora`` (a PEFT adapter of rank
    ``rank``, see docs/lora.md)."""

    dtype: str = "base"
    shard_size: int = DEFAULT_SHARD_SIZE
    copy_files: bool = True
    format: str = "model"
    rank: int | None = None


@attrs.frozen
class MergeSpec:
    """A validated merge configuration (components already built)."""

    base: Path
    models: tuple[ModelSpec, ...]
    recipe: RecipeSpec
    rules: tuple[RuleSpec, ...] = ()
    fallback: Merger | None = None
    evaluators: tuple[Evaluator, ...] = ()
    device: str = "auto"
    compute_dtype: str = "float32"
    seed: int = 0
    output: OutputSpec = OutputSpec()
    prefetch: int = 1
    source: Path | None = None
    vocab: str | None = None
    input_dtype: str = "same"
    notes: tuple[str, ...] = ()
    #: what reading a NaN/inf weight does: error, warn or ignore (pactframe.sources)
    nonfinite: str = DEFAULT_NONFINITE
    #: where the work units run (``None``: this process, as the ``local`` executor);
    #: not part of :meth:`to_dict`: the report's ``executor`` section records it
    executor: Executor | None = None

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def task_weights(self) -> tuple[float, ...] | None:
        """Per-model weights (``1.0`` where unset), or ``None`` when no model sets one."""
        if all(m.weight is None for m in self.models):
            return None
        return tuple(1.0 if m.weight is None else float(m.weight) for m in self.models)

    def route(self, name: str) -> tuple[str, RecipeSpec | None]:
        """``(label, recipe)`` for tensor ``name``; ``recipe`` is ``None`` when a rule
        excludes it (it then goes to the fallback merger)."""
        for rule in self.rules:
            if rule.matches(name):
                return (f"rule {rule.match!r}", None if rule.exclude else rule.recipe)
        return ("default", self.recipe)

    def recipes(self) -> list[RecipeSpec]:
        out = [self.recipe]
        out += [r.recipe for r in self.rules if r.recipe is not None]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration (every component with all its parameters)."""
        return {
            "base": str(self.base),
            "models": [
                {
                    "name": m.name,
                    "path": str(m.path),
                    **({"covariance": str(m.covariance)} if m.covariance else {}),
                    **({"weight": m.weight} if m.weight is not None else {}),
                    **({"type": m.type} if m.type != spec_default(ModelSpec, "type") else {}),
                }
                for m in self.models
            ],
            **self.recipe.to_dict(),
            "rules": [
                {
                    "match": r.match,
                    "exclude": r.exclude,
                    **(r.recipe.to_dict() if r.recipe is not None else {}),
                }
                for r in self.rules
            ],
            "fallback": self.fallback.to_config() if self.fallback else None,
            "evaluators": [e.to_config() for e in self.evaluators],
            "device": self.device,
            "compute_dtype": self.compute_dtype,
            "seed": self.seed,
            "output": attrs.asdict(self.output),
            "prefetch": self.prefetch,
            **({"vocab": self.vocab} if self.vocab is not None else {}),
            **(
                {"input_dtype": self.input_dtype}
                if self.input_dtype != spec_default(MergeSpec, "input_dtype")
                else {}
            ),
            "nonfinite": self.nonfinite,
        }


# ----------------------------------------------------------------- parsing
def load_config(
    path: str | os.PathLike[str], *, registry: Registry | None = None, check_files: bool = True
) -> MergeSpec:
    """Read a YAML file and parse it (relative paths resolve against its folder).

    A mergekit config (one with ``merge_method``) is converted first
    (:mod:`pactframe.mergekit_compat`); the conversion's notes land in ``spec.notes``."""
    data, notes = read_config_data(path)
    spec = parse_config(
        data,
        registry=registry,
        base_dir=Path(path).parent,
        source=Path(path),
        check_files=check_files,
    )
    return attrs.evolve(spec, notes=notes) if notes else spec


def load_spec(
    config: MergeSpec | Mapping[str, Any] | str | os.PathLike[str],
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> MergeSpec:
    """A :class:`MergeSpec` from a YAML path, a config mapping or a spec (returned as is).

    ``base_dir``: where a mapping's relative paths resolve (default: the working
    directory); a file's resolve against its folder. Also ``pactframe.api.load_spec``."""
    if isinstance(config, MergeSpec):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, registry=registry, base_dir=base_dir, check_files=check_files)
    return load_config(config, registry=registry, check_files=check_files)


def read_config_data(path: str | os.PathLike[str]) -> tuple[Any, tuple[str, ...]]:
    """``(config mapping, notes)`` of a YAML file; a mergekit config is converted."""
    from pactframe.mergekit_compat import convert_mergekit, is_mergekit_config

    data = read_yaml(path)
    if is_mergekit_config(data):
        converted = convert_mergekit(data, base_dir=Path(path).parent, source=str(path))
        return converted.config, converted.notes
    return data, ()


#: limits of a config file: bytes on disk, values after YAML aliases are expanded,
#: nesting depth (a merge config has a few dozen values; see docs/security.md)
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 10_000
MAX_CONFIG_DEPTH = 32


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The YAML document in the config file ``path`` (safe loader: plain data only).

    Refused with one :class:`ConfigError`: a path that is not a regular file (a
    folder, a FIFO), a file over :data:`MAX_CONFIG_BYTES`, binary or non-UTF-8
    content, invalid YAML, duplicate keys, and documents whose YAML aliases expand
    to more than :data:`MAX_CONFIG_VALUES` values or nest deeper than
    :data:`MAX_CONFIG_DEPTH` (an "alias bomb" is refused at once).
    """
    p = Path(path)
    shown = short_repr(str(p), 400)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"Config file {shown} does not exist.") from None
    except OSError as exc:
        raise ConfigError(f"Config file {shown} cannot be read: {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"Config file {shown} is not a regular file (a folder, pipe or device); give the "
            "path of the YAML file."
        )
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"Config file {shown} is {st.st_size} bytes; a merge config is a small YAML file "
            f"(at most {MAX_CONFIG_BYTES} bytes). Is this the right file?"
        )
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"Config file {shown} cannot be read: {exc.strerror or exc}.") from exc
    return parse_yaml(raw, f"Config file {shown}")


def parse_yaml(raw: bytes | str, what: str = "The config") -> Any:
    """Parse YAML text under the limits of :func:`read_yaml`; ``what`` starts messages."""
    import yaml

    if isinstance(raw, bytes):
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} is over {MAX_CONFIG_BYTES} bytes; a config is small.")
        if b"\x00" in raw:
            raise ConfigError(
                f"{what} is binary (it holds NUL bytes at offset {raw.index(0)}), not a YAML "
                "text file. Give the path of the merge config."
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                "a config is a YAML text file. Save it as UTF-8."
            ) from None
    else:
        text = raw
    try:
        data = yaml.load(text, Loader=_config_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(
            f"{what} nests too deeply for a merge config (at most {MAX_CONFIG_DEPTH} levels)."
        ) from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. an int of 5000 digits
        raise ConfigError(
            f"{what} holds a value YAML cannot build: {short_text(str(exc), 300)}."
        ) from None
    _check_expansion(data, what)
    return data


def _yaml_problem(exc: Exception) -> str:
    """One line from a PyYAML error: the problem and where (line, column), bounded."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    if not problem:
        return short_text(" ".join(str(exc).split()), 300)
    text = f"{problem}" + (f" ({context})" if context else "")
    if mark is not None:
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    return short_text(" ".join(text.split()), 300)


_LOADERS: dict[str, type] = {}


def _config_loader() -> type:
    """A safe YAML loader (the C one when available) that refuses duplicate keys."""
    if "loader" in _LOADERS:
        return _LOADERS["loader"]
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class ConfigLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        duplicate = key in seen
                        seen.add(key)
                    except TypeError:  # unhashable: the base class reports it
                        continue
                    if duplicate:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping",
                            node.start_mark,
                            f"found the duplicate key {short_repr(key)}",
                            key_node.start_mark,
                        )
            return super().construct_mapping(node, deep=deep)

    _LOADERS["loader"] = ConfigLoader
    return ConfigLoader


def _check_expansion(data: Any, what: str) -> None:
    """Refuse documents whose aliases expand past :data:`MAX_CONFIG_VALUES` values,
    that nest past :data:`MAX_CONFIG_DEPTH` or that contain themselves."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any, depth: int) -> int:
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"{what} nests too deeply for a merge config (at most {MAX_CONFIG_DEPTH} levels)."
            )
        if isinstance(obj, Mapping):
            children: list[Any] = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = list(obj)
        else:
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(
                f"{what} contains itself through a YAML alias (*name inside its own &name); "
                "a merge config must be plain data."
            )
        active.add(key)
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_CONFIG_VALUES:
                raise ConfigError(
                    f"{what} expands to more than {MAX_CONFIG_VALUES} values once its YAML "
                    "aliases (*name) are replaced by what their anchors (&name) mark; a merge "
                    "config has a few dozen. Write the values out, or use fewer aliases."
                )
        active.discard(key)
        sizes[key] = total
        return total

    size(data, 0)


def parse_config(
    data: Any,
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    source: Path | None = None,
    check_files: bool = True,
) -> MergeSpec:
    """Parse a config mapping; raise :class:`ConfigProblems` listing every problem."""
    found = analyse_config(
        data, registry=registry, base_dir=base_dir, source=source, check_files=check_files
    )
    if found.problems or found.spec is None:
        raise ConfigProblems(found.problems, str(source) if source else "the config")
    return found.spec


@attrs.frozen
class ConfigAnalysis:
    """What :func:`analyse_config` found: the spec (``None`` if any problem), every
    problem, and the paths it could parse (so files can be checked even when other
    parts of the config are wrong)."""

    spec: MergeSpec | None
    problems: tuple[str, ...]
    base: Path | None
    models: tuple[ModelSpec, ...]


def analyse_config(
    data: Any,
    *,
    registry: Registry | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    source: Path | None = None,
    check_files: bool = True,
) -> ConfigAnalysis:
    """The non-raising parser ``validate`` uses: every problem, never an exception."""
    parser = _Parser(registry, Path(base_dir) if base_dir is not None else Path.cwd(), check_files)
    spec = parser.parse(data, source)
    return ConfigAnalysis(spec, tuple(parser.problems), parser.base, parser.model_specs)


class _Parser:
    def __init__(self, registry: Registry | None, base_dir: Path, check_files: bool) -> None:
        self._registry = registry
        self._registry_failed = False
        self.base_dir = base_dir
        self.check_files = check_files
        self.problems: list[str] = []
        self.base: Path | None = None
        self.model_specs: tuple[ModelSpec, ...] = ()

    @property
    def registry(self) -> Registry | None:
        """The registry, built once; ``None`` (with one problem) if the plugins fail to load."""
        if self._registry is None and not self._registry_failed:
            try:
                self._registry = build_registry()
            except PactframeError as exc:
                self._registry_failed = True
                self.problem(f"plugins: {exc}")
        return self._registry

    def problem(self, text: str) -> None:
        self.problems.append(text)

    # helpers ------------------------------------------------------------
    def check_keys(self, where: str, mapping: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in mapping:
            if key in allowed:
                continue
            hint = ""
            if str(key) in MERGEKIT_HINTS:
                hint = f" (mergekit's {short_repr(key)} is {MERGEKIT_HINTS[str(key)]} here)"
            else:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                if close:
                    hint = f" Did you mean {short_repr(close[0])}?"
            self.problem(
                f"{where}: unknown key {short_repr(key)}.{hint} Allowed keys: "
                f"{', '.join(allowed)}."
            )

    def path(self, where: str, value: Any, *, must_exist: bool = True) -> Path | None:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            self.problem(f"{where}: expected a path, got {short_repr(value)}.")
            return None
        p = Path(os.path.expanduser(str(value)))
        if not p.is_absolute():
            p = self.base_dir / p
        try:
            exists = p.exists()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte...
            self.problem(
                f"{where}: {short_repr(str(p), 400)} cannot be used as a path "
                f"({short_text(getattr(exc, 'strerror', None) or str(exc), 200)})."
            )
            return None
        if self.check_files and must_exist and not exists:
            self.problem(
                f"{where}: {short_repr(str(p), 400)} does not exist (relative paths resolve "
                f"against the config file's folder {short_repr(str(self.base_dir), 400)})."
            )
        return p

    def component(self, where: str, kind: str, spec: Any) -> Component | None:
        registry = self.registry
        if registry is None:
            return None
        try:
            return registry.build(kind, spec)
        except PactframeError as exc:
            self.problem(f"{where}: {exc}")
            return None

    def preprocessors(self, where: str, value: Any) -> tuple[Preprocessor, ...] | None:
        if value is None:
            return ()
        if isinstance(value, (str, Mapping)):
            value = [value]
        if not isinstance(value, list):
            self.problem(f"{where}: expected a list of preprocessors, got {short_repr(value)}.")
            return None
        built = [self.component(f"{where}[{i}]", "preprocessor", v) for i, v in enumerate(value)]
        if any(b is None for b in built):
            return None
        return tuple(built)  # type: ignore[arg-type]

    # sections -----------------------------------------------------------
    def parse(self, data: Any, source: Path | None) -> MergeSpec | None:
        if not isinstance(data, Mapping):
            self.problem(
                f"the config must be a mapping with keys like base, models, merger; got "
                f"{type(data).__name__}."
            )
            return None
        self.check_keys("config", data, TOP_KEYS)
        base = None
        if "base" not in data:
            self.problem("config: 'base' (the pre-trained model's path) is required.")
        else:
            base = self.base = self.path("base", data["base"])
        models = self.model_specs = self.models(data.get("models"))
        merger = None
        if "merger" not in data:
            self.problem("config: 'merger' is required, e.g. merger: {name: task_arithmetic}.")
        else:
            merger = self.component("merger", "merger", data["merger"])
        pre = self.preprocessors("preprocessors", data.get("preprocessors"))
        recipe = None
        if merger is not None and pre is not None:
            recipe = RecipeSpec("default", pre, merger)  # type: ignore[arg-type]
        rules = self.rules(data.get("rules"), recipe)
        fallback = None  # `fallback: null` turns the fallback off
        if data.get("fallback", DEFAULT_FALLBACK) is not None:
            fallback = self.component("fallback", "merger", data.get("fallback", DEFAULT_FALLBACK))
        evaluators = self.evaluators(data.get("evaluators"))
        device = data.get("device", spec_default(MergeSpec, "device"))
        if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            self.problem(
                "device: must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got "
                f"{short_repr(device)}."
            )
        compute_dtype = data.get("compute_dtype", spec_default(MergeSpec, "compute_dtype"))
        if not isinstance(compute_dtype, str) or compute_dtype not in COMPUTE_DTYPES:
            self.problem(
                f"compute_dtype: must be one of {', '.join(COMPUTE_DTYPES)}; got "
                f"{short_repr(compute_dtype)}."
            )
        seed = data.get("seed", spec_default(MergeSpec, "seed"))
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            self.problem(f"seed: must be an int in [0, 2**64); got {short_repr(seed)}.")
        prefetch = data.get("prefetch", spec_default(MergeSpec, "prefetch"))
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 <= prefetch <= 8:
            self.problem(
                "prefetch: must be an int in [0, 8] (tensor names read ahead); got "
                f"{short_repr(prefetch)}."
            )
        output = self.output(data.get("output"))
        vocab = data.get("vocab")
        if vocab is not None and vocab not in VOCAB_MODES:
            self.problem(
                f"vocab: must be 'base' (keep the base's embedding rows) or 'union' (keep "
                f"the rows the fine-tunes' tokenizers add); got {vocab!r}."
            )
        input_dtype = data.get("input_dtype", spec_default(MergeSpec, "input_dtype"))
        if input_dtype not in INPUT_DTYPE_MODES:
            self.problem(
                f"input_dtype: must be 'same' (inputs must share one dtype) or 'cast' (cast "
                f"every input to compute_dtype); got {input_dtype!r}."
            )
        self.check_model_count(recipe, rules, len(models))
        if any(m.weight is not None for m in models):
            self.check_weights(recipe, rules, fallback)
        nonfinite = data.get("nonfinite", spec_default(MergeSpec, "nonfinite"))
        if not isinstance(nonfinite, str) or nonfinite not in NONFINITE_POLICIES:
            self.problem(
                f"nonfinite: must be one of {', '.join(NONFINITE_POLICIES)} (what a NaN or "
                f"infinite weight does); got {repr(nonfinite)[:60]}."
            )
        executor = None
        if data.get("executor") is not None:  # absent: this process (docs/executors.md)
            executor = self.component("executor", "executor", data["executor"])
        if self.problems:
            return None
        assert base is not None and recipe is not None  # else a problem was recorded
        return MergeSpec(
            base=base,
            models=models,
            recipe=recipe,
            rules=rules,
            fallback=fallback,  # type: ignore[arg-type]
            evaluators=evaluators,
            device=device,
            compute_dtype=compute_dtype,
            seed=seed,
            output=output,
            prefetch=prefetch,
            source=source,  # type: ignore[arg-type]
            vocab=vocab,
            input_dtype=input_dtype,
            nonfinite=nonfinite,
            executor=executor,  # type: ignore[arg-type]
        )

    def check_model_count(self, recipe: Any, rules: Sequence[RuleSpec], count: int) -> None:
        """Mergers that take an exact number of models (slerp: one) get that many."""
        mergers = [recipe.merger] if recipe is not None else []
        mergers += [r.recipe.merger for r in rules if r.recipe is not None]
        for m in mergers:
            exact = getattr(m, "exact_models", None)
            if exact is not None and count and count != exact:
                self.problem(
                    f"merger {m.name!r} takes exactly {exact} fine-tuned model(s) besides the "
                    f"base; models lists {count}. List {exact}, or use linear / "
                    "task_arithmetic to merge more."
                )

    def check_weights(self, recipe: Any, rules: Sequence[RuleSpec], fallback: Any) -> None:
        """Per-model weights need mergers whose method defines them."""
        mergers = [("merger", recipe.merger if recipe is not None else None)]
        mergers += [(f"rule {r.match!r}", r.recipe.merger) for r in rules if r.recipe]
        mergers.append(("fallback", fallback))
        refused = sorted(
            {
                f"{where}: {m.name}"
                for where, m in mergers
                if m is not None and not getattr(m, "accepts_weights", False)
            }
        )
        if refused:
            self.problem(
                "models[].weight is set, but these mergers have no notion of per-model weight: "
                f"{'; '.join(refused)}. The weighted methods are linear, average, "
                "task_arithmetic and ties (see docs/config.md); remove the weights or pick "
                "one of those mergers."
            )

    def models(self, value: Any) -> tuple[ModelSpec, ...]:
        if not isinstance(value, list) or not value:
            self.problem(
                "models: must be a non-empty list of {name: ..., path: ...} entries (the "
                f"fine-tuned checkpoints); got {short_repr(value)}."
            )
            return ()
        out = []
        for i, entry in enumerate(value):
            where = f"models[{i}]"
            if isinstance(entry, str):
                entry = {"name": Path(entry).stem, "path": entry}
            if not isinstance(entry, Mapping):
                self.problem(
                    f"{where}: expected a mapping {{name, path, covariance}}; got "
                    f"{short_repr(entry)}."
                )
                continue
            self.check_keys(where, entry, MODEL_KEYS)
            name = entry.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
                self.problem(
                    f"{where}: 'name' must be a task name of letters, digits, '_', '-' or '.'; "
                    f"got {short_repr(name)}."
                )
                continue
            if "path" not in entry:
                self.problem(f"{where} ({name}): 'path' is required.")
                continue
            weight = entry.get("weight")
            if weight is not None and (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or weight != weight
                or abs(weight) == float("inf")
            ):
                self.problem(f"{where} ({name}).weight: must be a finite number; got {weight!r}.")
                continue
            kind = entry.get("type", spec_default(ModelSpec, "type"))
            if kind not in MODEL_TYPES:
                self.problem(
                    f"{where} ({name}).type: must be one of {', '.join(MODEL_TYPES)}; got {kind!r}."
                )
                continue
            path = self.path(f"{where} ({name}).path", entry["path"])
            cov = None
            if entry.get("covariance") is not None:
                cov = self.path(f"{where} ({name}).covariance", entry["covariance"])
            if path is not None:
                out.append(
                    ModelSpec(name, path, cov, None if weight is None else float(weight), kind)
                )
        names = [m.name for m in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            self.problem(f"models: task names must be distinct; repeated: {', '.join(dupes)}.")
        return tuple(out)

    def rules(self, value: Any, default: RecipeSpec | None) -> tuple[RuleSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(
                f"rules: expected a list of {{match: REGEX, ...}}; got "
                f"{short_repr(value)}."
            )
            return ()
        out = []
        for i, entry in enumerate(value):
            where = f"rules[{i}]"
            if not isinstance(entry, Mapping):
                self.problem(f"{where}: expected a mapping with 'match'; got {short_repr(entry)}.")
                continue
            self.check_keys(where, entry, RULE_KEYS)
            match = entry.get("match")
            try:
                if not isinstance(match, str):
                    raise TypeError("not a string")
                re.compile(match)
            except (re.error, TypeError) as exc:
                self.problem(
                    f"{where}: 'match' must be a regular expression; got {short_repr(match)} "
                    f"({exc})."
                )
                continue
            exclude = entry.get("exclude", False)
            if not isinstance(exclude, bool):
                self.problem(
                    f"{where}: 'exclude' must be true or false; got "
                    f"{short_repr(exclude)}."
                )
                continue
            if exclude:
                if "merger" in entry or "preprocessors" in entry:
                    self.problem(
                        f"{where}: an excluded rule takes no merger or preprocessors "
                        "(excluded tensors go to the fallback merger)."
                    )
                out.append(RuleSpec(match, None, True))
                continue
            merger = (
                self.component(f"{where}.merger", "merger", entry["merger"])
                if "merger" in entry
                else (default.merger if default else None)
            )
            pre = (
                self.preprocessors(f"{where}.preprocessors", entry["preprocessors"])
                if "preprocessors" in entry
                else (default.preprocessors if default else None)
            )
            if merger is not None and pre is not None:
                recipe = RecipeSpec(f"rule {match!r}", pre, merger)  # type: ignore[arg-type]
                out.append(RuleSpec(match, recipe))
        return tuple(out)

    def evaluators(self, value: Any) -> tuple[Evaluator, ...]:
        if value is None:
            return ()
        if isinstance(value, (str, Mapping)):
            value = [value]
        if not isinstance(value, list):
            self.problem(f"evaluators: expected a list; got {short_repr(value)}.")
            return ()
        out = []
        for i, v in enumerate(value):
            ev = self.component(f"evaluators[{i}]", "evaluator", v)
            if ev is None:
                continue
            if evaluator_level(ev) != "tensor":
                self.problem(
                    f"evaluators[{i}]: {ev.name!r} is a model-level evaluator; a merge runs only "
                    "tensor-level evaluators. Run model-level evaluation after the merge."
                )
                continue
            out.append(ev)
        return tuple(out)  # type: ignore[arg-type]

    def output(self, value: Any) -> OutputSpec:
        if value is None:
            return OutputSpec()
        if not isinstance(value, Mapping):
            self.problem(
                f"output: expected a mapping {{dtype, shard_size, copy_files}}; got "
                f"{short_repr(value)}."
            )
            return OutputSpec()
        self.check_keys("output", value, OUTPUT_KEYS)
        dtype = value.get("dtype", spec_default(OutputSpec, "dtype"))
        if not isinstance(dtype, str) or (dtype != "base" and dtype not in OUTPUT_DTYPES):
            self.problem(
                f"output.dtype: must be 'base' or one of {', '.join(OUTPUT_DTYPES)}; got "
                f"{short_repr(dtype)}."
            )
            dtype = spec_default(OutputSpec, "dtype")
        shard_size = spec_default(OutputSpec, "shard_size")
        try:
            shard_size = parse_size(value.get("shard_size", shard_size))
        except ConfigError as exc:
            self.problem(str(exc))
        copy_files = value.get("copy_files", spec_default(OutputSpec, "copy_files"))
        if not isinstance(copy_files, bool):
            self.problem(f"output.copy_files: must be true or false; got {short_repr(copy_files)}.")
            copy_files = spec_default(OutputSpec, "copy_files")
        fmt = value.get("format", spec_default(OutputSpec, "format"))
        rank = value.get("rank")
        if fmt not in OUTPUT_FORMATS:
            self.problem(f"output.format: must be 'model' or 'lora'; got {fmt!r}.")
            fmt = spec_default(OutputSpec, "format")
        if fmt == "lora" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            self.problem(
                f"output.rank: output.format: lora needs a positive integer rank; got {rank!r}."
            )
            rank = 1
        elif fmt != "lora" and rank is not None:
            self.problem("output.rank: only used with output.format: lora; remove it.")
            rank = None
        return OutputSpec(dtype, shard_size, copy_files, fmt, rank)

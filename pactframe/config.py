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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pactframe.checkpoint import parse_size
from pactframe.contracts import Component, Evaluator, Executor, Merger, Preprocessor
from pactframe.device import COMPUTE_DTYPES, OUTPUT_DTYPES
from pactframe.errors import ConfigError, PactframeError
from pactframe.registry import Registry, build_registry

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
    "executor",
)
MODEL_KEYS = ("name", "path", "covariance")
RULE_KEYS = ("match", "merger", "preprocessors", "exclude")
OUTPUT_KEYS = ("dtype", "shard_size", "copy_files")
DEFAULT_FALLBACK = "average"

# mergekit spellings -> ours, so a mergekit user is told where things moved
MERGEKIT_HINTS = {
    "base_model": "base",
    "merge_method": "merger",
    "dtype": "output.dtype (or compute_dtype)",
    "out_dtype": "output.dtype",
    "parameters": "the merger's own keys, e.g. merger: {name: ties, density: 0.2}",
    "slices": "rules (per tensor-name pattern)",
    "tokenizer_source": "nothing: tokenizer files are copied from the base folder",
    "model": "path",
}


class ConfigProblems(ConfigError):
    """A configuration with one or more problems; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str], source: str = "the config") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {source}:\n{lines}")


@attrs.frozen
class ModelSpec:
    """One fine-tuned model: its task name, checkpoint path and optional covariance file."""

    name: str
    path: Path
    covariance: Path | None = None


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
    ``shard_size`` in bytes; ``copy_files``: copy the base folder's non-weight files."""

    dtype: str = "base"
    shard_size: int = 2 * 10**9
    copy_files: bool = True


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
    #: where the work units run (``None``: this process, as the ``local`` executor);
    #: not part of :meth:`to_dict`: the report's ``executor`` section records it
    executor: Executor | None = None

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

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
        }


# ----------------------------------------------------------------- parsing
def load_config(
    path: str | os.PathLike[str], *, registry: Registry | None = None, check_files: bool = True
) -> MergeSpec:
    """Read a YAML file and parse it (relative paths resolve against its folder)."""
    data = read_yaml(path)
    return parse_config(
        data,
        registry=registry,
        base_dir=Path(path).parent,
        source=Path(path),
        check_files=check_files,
    )


def read_yaml(path: str | os.PathLike[str]) -> Any:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {str(p)!r} does not exist.")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {str(p)!r} is not valid YAML: {exc}") from exc


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
                hint = f" (mergekit's {key!r} is {MERGEKIT_HINTS[str(key)]} here)"
            else:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                if close:
                    hint = f" Did you mean {close[0]!r}?"
            self.problem(f"{where}: unknown key {key!r}.{hint} Allowed keys: {', '.join(allowed)}.")

    def path(self, where: str, value: Any, *, must_exist: bool = True) -> Path | None:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            self.problem(f"{where}: expected a path, got {value!r}.")
            return None
        p = Path(os.path.expanduser(str(value)))
        if not p.is_absolute():
            p = self.base_dir / p
        if self.check_files and must_exist and not p.exists():
            self.problem(
                f"{where}: {str(p)!r} does not exist (relative paths resolve against the "
                f"config file's folder {str(self.base_dir)!r})."
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
            self.problem(f"{where}: expected a list of preprocessors, got {value!r}.")
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
        fallback = self.component("fallback", "merger", data.get("fallback", DEFAULT_FALLBACK))
        evaluators = self.evaluators(data.get("evaluators"))
        device = data.get("device", "auto")
        if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            self.problem(f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}.")
        compute_dtype = data.get("compute_dtype", "float32")
        if compute_dtype not in COMPUTE_DTYPES:
            self.problem(
                f"compute_dtype: must be one of {', '.join(COMPUTE_DTYPES)}; got {compute_dtype!r}."
            )
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            self.problem(f"seed: must be a non-negative int; got {seed!r}.")
        prefetch = data.get("prefetch", 1)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 <= prefetch <= 8:
            self.problem(
                f"prefetch: must be an int in [0, 8] (tensor names read ahead); got {prefetch!r}."
            )
        output = self.output(data.get("output"))
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
            executor=executor,  # type: ignore[arg-type]
        )

    def models(self, value: Any) -> tuple[ModelSpec, ...]:
        if not isinstance(value, list) or not value:
            self.problem(
                "models: must be a non-empty list of {name: ..., path: ...} entries (the "
                f"fine-tuned checkpoints); got {value!r}."
            )
            return ()
        out = []
        for i, entry in enumerate(value):
            where = f"models[{i}]"
            if isinstance(entry, str):
                entry = {"name": Path(entry).stem, "path": entry}
            if not isinstance(entry, Mapping):
                self.problem(
                    f"{where}: expected a mapping {{name, path, covariance}}; got {entry!r}."
                )
                continue
            self.check_keys(where, entry, MODEL_KEYS)
            name = entry.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
                self.problem(
                    f"{where}: 'name' must be a task name of letters, digits, '_', '-' or '.'; "
                    f"got {name!r}."
                )
                continue
            if "path" not in entry:
                self.problem(f"{where} ({name}): 'path' is required.")
                continue
            path = self.path(f"{where} ({name}).path", entry["path"])
            cov = None
            if entry.get("covariance") is not None:
                cov = self.path(f"{where} ({name}).covariance", entry["covariance"])
            if path is not None:
                out.append(ModelSpec(name, path, cov))
        names = [m.name for m in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            self.problem(f"models: task names must be distinct; repeated: {', '.join(dupes)}.")
        return tuple(out)

    def rules(self, value: Any, default: RecipeSpec | None) -> tuple[RuleSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(f"rules: expected a list of {{match: REGEX, ...}}; got {value!r}.")
            return ()
        out = []
        for i, entry in enumerate(value):
            where = f"rules[{i}]"
            if not isinstance(entry, Mapping):
                self.problem(f"{where}: expected a mapping with 'match'; got {entry!r}.")
                continue
            self.check_keys(where, entry, RULE_KEYS)
            match = entry.get("match")
            try:
                if not isinstance(match, str):
                    raise TypeError("not a string")
                re.compile(match)
            except (re.error, TypeError) as exc:
                self.problem(
                    f"{where}: 'match' must be a regular expression; got {match!r} ({exc})."
                )
                continue
            exclude = entry.get("exclude", False)
            if not isinstance(exclude, bool):
                self.problem(f"{where}: 'exclude' must be true or false; got {exclude!r}.")
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
            self.problem(f"evaluators: expected a list; got {value!r}.")
            return ()
        out = []
        for i, v in enumerate(value):
            ev = self.component(f"evaluators[{i}]", "evaluator", v)
            if ev is None:
                continue
            if getattr(ev, "level", "tensor") != "tensor":
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
                f"output: expected a mapping {{dtype, shard_size, copy_files}}; got {value!r}."
            )
            return OutputSpec()
        self.check_keys("output", value, OUTPUT_KEYS)
        dtype = value.get("dtype", "base")
        if dtype != "base" and dtype not in OUTPUT_DTYPES:
            self.problem(
                f"output.dtype: must be 'base' or one of {', '.join(OUTPUT_DTYPES)}; got {dtype!r}."
            )
            dtype = "base"
        shard_size = 2 * 10**9
        try:
            shard_size = parse_size(value.get("shard_size", "2GB"))
        except ConfigError as exc:
            self.problem(str(exc))
        copy_files = value.get("copy_files", True)
        if not isinstance(copy_files, bool):
            self.problem(f"output.copy_files: must be true or false; got {copy_files!r}.")
            copy_files = True
        return OutputSpec(dtype, shard_size, copy_files)

"""Fuzzing the config loader (issue 18): random YAML documents, values, bytes and
alias structures, bounded in size.

The invariant: loading a config file (``load_config``) and the dry run behind
``pactframe validate`` either succeed or raise a
:class:`~pactframe.errors.PactframeError` - never another exception, never a hang
(each document is handled within seconds), and never a file written.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pactframe.cli.validate_cmd import collect
from pactframe.config import TOP_KEYS, MergeSpec, load_config
from pactframe.errors import PactframeError
from tests.integration._pipeline_helpers import save_single, tiny_model

#: a document must be handled within this many seconds (a 2-core shared machine)
PER_DOCUMENT_S = 5.0
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with a real base and fine-tune, so some documents get past the paths."""
    root = tmp_path_factory.mktemp("fuzz")
    base = tiny_model(0, layers=1)
    save_single(base, root / "base.safetensors")
    save_single({k: v + 1 if v.is_floating_point() else v for k, v in base.items()},
                root / "ft0.safetensors")
    return root


@pytest.fixture(scope="module")
def registry():
    from pactframe import build_registry

    return build_registry()


# ------------------------------------------------------------------ strategies
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 10**300, 2**64, 2**63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["base.safetensors", "ft0.safetensors", "./", "..", "/", "missing", "2GB", "1e400GB",
         "float32", "bfloat16", "cuda:0", "auto", "ties", "tsv_m", "task_arithmetic", "average",
         "dare", "pact", "randomized_svd", "emr", "iso_c", "x" * 3000, "\x00", "\ud800x"]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(TOP_KEYS)), children,
                        max_size=5),
    ),
    max_leaves=25,
)
component = st.one_of(
    st.sampled_from(["ties", "tsv_m", "task_arithmetic", "average", "emr", "nope", ""]),
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["ties", "tsv_m", "task_arithmetic", "iso_c"]), values)},
        optional={
            "scaling": values,
            "density": values,
            "fallback": values,
            "decomposer": values,
            "rank_split": values,
        },
    ),
    values,
)
model_entry = st.one_of(
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["a", "b", "t0"]), values),
         "path": st.one_of(st.sampled_from(["ft0.safetensors", "missing"]), values)},
        optional={"covariance": values, "extra": values},
    ),
    values,
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "base": st.one_of(st.just("base.safetensors"), values),
        "models": st.one_of(st.lists(model_entry, min_size=1, max_size=3), values),
        "merger": component,
        "preprocessors": st.one_of(st.lists(component, max_size=2), values),
        "fallback": st.one_of(component, st.none()),
        "rules": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"match": st.one_of(st.sampled_from(["norm", "(", ".*", "["]), values)},
                    optional={"merger": component, "exclude": values, "preprocessors": values},
                ),
                max_size=2,
            ),
            values,
        ),
        "evaluators": values,
        "device": values,
        "compute_dtype": values,
        "seed": values,
        "output": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"dtype": values, "shard_size": values, "copy_files": values}
            ),
            values,
        ),
        "prefetch": values,
        "merge_method": values,
    },
)
#: mergekit-shaped configs (converted when ``merge_method`` is present)
mergekit_params = st.fixed_dictionaries(
    {},
    optional={k: values for k in ("weight", "density", "t", "lambda", "normalize", "rescale")},
)
mergekit_configs = st.fixed_dictionaries(
    {
        "merge_method": st.one_of(
            st.sampled_from(
                ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp",
                 "passthrough", "della"]
            ),
            values,
        )
    },
    optional={
        "base_model": st.one_of(st.sampled_from(["base.safetensors", "org/model"]), values),
        "models": st.one_of(
            st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {"model": st.one_of(st.sampled_from(["ft0.safetensors", "a+b"]), values)},
                        optional={"parameters": st.one_of(mergekit_params, values)},
                    ),
                    values,
                ),
                max_size=3,
            ),
            values,
        ),
        "slices": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "sources": st.one_of(
                            st.lists(
                                st.fixed_dictionaries(
                                    {"model": values},
                                    optional={"layer_range": values, "parameters": values},
                                ),
                                max_size=2,
                            ),
                            values,
                        )
                    },
                ),
                max_size=2,
            ),
            values,
        ),
        "parameters": st.one_of(mergekit_params, values),
        "dtype": values,
        "out_dtype": values,
        "tokenizer_source": values,
        "modules": values,
    },
)
YAML_CHARS = "ab:-[]{},&*!|>'\"#%@`?\n\t \\0123456789.eE+~"
raw_texts = st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=300)


@st.composite
def alias_structures(draw):
    """Chains of anchors and aliases: bombs (deep and wide) and harmless reuse."""
    levels = draw(st.integers(1, 14))
    fan = draw(st.integers(1, 12))
    lines = [f"a0: &a0 [{', '.join(['v'] * fan)}]"]
    for i in range(1, levels + 1):
        style = draw(st.sampled_from(["list", "map", "merge"]))
        if style == "list":
            lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]")
        elif style == "map":
            items = ", ".join(f"k{j}: *a{i - 1}" for j in range(fan))
            lines.append(f"a{i}: &a{i} {{{items}}}")
        else:
            lines.append(f"a{i}: &a{i} {{<<: {{x: *a{i - 1}}}, y: *a{i - 1}}}")
    key = draw(st.sampled_from(["seed", "merger", "models", "base", "output", "rules"]))
    lines.append(f"{key}: *a{levels}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------- the invariant
def check_document(folder: Path, registry, data: bytes) -> None:
    cfg = folder / "cfg.yaml"
    cfg.write_bytes(data)
    before = sorted(p.name for p in folder.iterdir())
    start = time.perf_counter()
    try:
        spec = load_config(cfg, registry=registry)
        assert isinstance(spec, MergeSpec)
    except PactframeError as exc:
        assert len(str(exc)) < 20_000  # bounded messages
    try:
        collect(str(cfg))
    except PactframeError as exc:
        assert len(str(exc)) < 20_000
    assert time.perf_counter() - start < PER_DOCUMENT_S
    assert sorted(p.name for p in folder.iterdir()) == before  # never output


@FUZZ
@given(data=configs)
def test_random_configs_load_or_raise_a_pactframe_error(folder, registry, data):
    """Structured configs with random values: a MergeSpec or a PactframeError, quickly."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:  # values PyYAML itself cannot represent
        return
    check_document(folder, registry, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=mergekit_configs)
def test_random_mergekit_shaped_configs_load_or_raise_a_pactframe_error(folder, registry, data):
    """Configs shaped like mergekit's (``merge_method``, ``models[].parameters``,
    ``slices``) with random values: a MergeSpec or a PactframeError, quickly."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    check_document(folder, registry, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=values)
def test_random_yaml_values_load_or_raise_a_pactframe_error(folder, registry, data):
    """Any YAML document (a list, a number, a string...): a PactframeError, quickly."""
    text = yaml.safe_dump(data, allow_unicode=True)
    check_document(folder, registry, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(text=raw_texts)
def test_random_yaml_text_loads_or_raises_a_pactframe_error(folder, registry, text):
    """Random text of YAML's special characters: success or a PactframeError, quickly."""
    check_document(folder, registry, text.encode())


@FUZZ
@given(raw=st.binary(max_size=400))
def test_random_bytes_raise_a_pactframe_error(folder, registry, raw):
    """Random bytes (binary files, other encodings): a PactframeError, quickly."""
    check_document(folder, registry, raw)


@FUZZ
@given(text=alias_structures())
def test_alias_structures_are_bounded(folder, registry, text):
    """Anchors and aliases, up to 12**14 values once expanded: refused or parsed, quickly."""
    check_document(folder, registry, text.encode())

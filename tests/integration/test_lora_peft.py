"""LoRA adapters as tasks, checked against real PEFT adapters built offline on tiny
generated transformers models (docs/lora.md)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from tests._optional import require

peft = require("peft", "hf")
transformers = require("transformers", "hf")

from pactframe.errors import CheckpointError, InputError  # noqa: E402
from pactframe.lora import LoraAdapterSource, apply_adapter  # noqa: E402
from pactframe.pipeline import MergePipeline  # noqa: E402
from pactframe.sources import FileTensorSource  # noqa: E402

warnings.filterwarnings("ignore")


def _llama(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _adapter(
    make_base: Any, folder: Path, seed: int, scale: float = 0.1, **lora: Any
) -> dict[str, torch.Tensor]:
    """Save a randomly initialised PEFT LoRA adapter (factors ~ N(0, scale^2)); return
    PEFT's own merged weights."""
    model = make_base()
    pm = peft.get_peft_model(model, peft.LoraConfig(init_lora_weights=False, **lora))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn_like(p) * scale)
    pm.save_pretrained(str(folder))
    merged = pm.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


LLAMA_ADAPTERS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]),
    "rslora": dict(
        r=8,
        lora_alpha=4,
        use_rslora=True,
        target_modules=["q_proj", "o_proj", "down_proj"],
        modules_to_save=["lm_head"],
    ),
    "patterns": dict(
        r=6,
        lora_alpha=12,
        target_modules=["q_proj", "k_proj", "gate_proj"],
        rank_pattern={"k_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 3},
    ),
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lora_llama")
    base = _llama()
    base.save_pretrained(str(root / "base"))
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    merged = {}
    for i, (name, cfg) in enumerate(LLAMA_ADAPTERS.items()):
        merged[name] = _adapter(_llama, root / name, 10 + i, **cfg)
        full = _llama()
        full.load_state_dict(merged[name])
        full.save_pretrained(str(root / f"full-{name}"))
    return {"root": root, "base": base_sd, "merged": merged}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lora_gpt2")
    base = _gpt2()
    base.save_pretrained(str(root / "base"))
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    merged = _adapter(
        _gpt2, root / "fifo", 3, r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"],
        fan_in_fan_out=True,
    )
    return {"root": root, "base": base_sd, "merged": merged}


def _check_task_vectors(root: Path, name: str, base_sd: dict, merged: dict) -> int:
    base = FileTensorSource(root / "base", "base")
    src = LoraAdapterSource(root / name, base)
    checked = 0
    for key in base.keys():
        want = merged[key].double() - base_sd[key].double()
        got = src.delta(key)
        got = torch.zeros_like(want) if got is None else got.double()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"{name}: {key}")
        checked += int(src.load_factors(key) is not None)
    return checked


@pytest.mark.parametrize("name", sorted(LLAMA_ADAPTERS))
def test_adapter_task_vectors_equal_peft_merged_minus_base(llama: dict, name: str) -> None:
    """Per tensor, scale * B A (and modules_to_save) equals PEFT's merge_and_unload - base."""
    n = _check_task_vectors(llama["root"], name, llama["base"], llama["merged"][name])
    assert n >= 6  # the targets were read as factors, not all as zero


def test_fan_in_fan_out_task_vectors_equal_peft(gpt2: dict) -> None:
    """GPT-2 Conv1D layers (weight (d_in, d_out)): the delta is (B A)^T."""
    assert _check_task_vectors(gpt2["root"], "fifo", gpt2["base"], gpt2["merged"]) == 2


def _config(root: Path, models: list[str], merger: Any, **extra: Any) -> dict[str, Any]:
    return {
        "base": str(root / "base"),
        "models": [{"name": m.replace("full-", ""), "path": str(root / m)} for m in models],
        "merger": merger,
        "device": "cpu",
        "compute_dtype": "float32",
        "fallback": "average",
        **extra,
    }


def _merge(root: Path, models: list[str], merger: Any, **extra: Any) -> dict[str, torch.Tensor]:
    pipe = MergePipeline.from_config(_config(root, models, merger, **extra))
    state, _ = pipe.merge_to_dict()
    return state


ELEMENTWISE: list[Any] = ["average", "task_arithmetic", "linear", "ties", {"name": "emr"}]
SPECTRAL: list[Any] = [
    "tsv_m",
    "iso_c",
    "iso_cts",
    {"name": "pact_tsv_m", "core_rank": 2, "task_rank": 2},
    {"name": "pact_iso_c", "core_rank": 2, "task_rank": 2},
]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def llama_dense(tmp_path_factory: Any) -> Path:
    """Three rank-16 adapters on every linear layer: each task vector (also after PACT
    removes at most 2 * 2 protected directions) has rank >= its TSV-M budget
    (min(m, n) / 3) and their sum has full rank, so the spectral mergers' result is
    defined by the task vectors alone (docs/lora.md, "Rank-deficient task vectors").
    Factors ~ N(0, 0.05^2) keep the deltas of the order of the weights, so the float32
    rounding of the materialised checkpoints (W_0 + Delta, minus W_0 again) stays
    below the 1e-5 tolerance after the polar factors."""
    root = tmp_path_factory.mktemp("lora_llama_dense")
    _llama().save_pretrained(str(root / "base"))
    for i in range(3):
        merged = _adapter(
            _llama, root / f"a{i}", 20 + i, r=16, lora_alpha=24, target_modules=ALL_LINEAR,
            use_rslora=i == 1, scale=0.05,
        )
        full = _llama()
        full.load_state_dict(merged)
        full.save_pretrained(str(root / f"full-a{i}"))
    return root


def _assert_same_merge(root: Path, names: list[str], merger: Any, **extra: Any) -> None:
    got = _merge(root, names, merger, **extra)
    want = _merge(root, [f"full-{n}" for n in names], merger, **extra)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0, msg=key)


def _id(m: Any) -> str:
    return m if isinstance(m, str) else m["name"]


@pytest.mark.parametrize("merger", ELEMENTWISE, ids=_id)
def test_merge_of_adapters_equals_merge_of_materialised_fine_tunes(
    llama: dict, merger: Any
) -> None:
    """Three adapters (different targets, ranks, rsLoRA, modules_to_save) merge exactly
    as their merge_and_unload checkpoints do (1e-5, float32)."""
    _assert_same_merge(llama["root"], sorted(LLAMA_ADAPTERS), merger)


@pytest.mark.parametrize("merger", SPECTRAL, ids=_id)
def test_spectral_merge_of_adapters_equals_merge_of_fine_tunes(
    llama_dense: Path, merger: Any
) -> None:
    """TSV-M, Iso-C, Iso-CTS and PACT-TSVM on factored adapters equal the same merge of
    the materialised fine-tunes (1e-5, float32)."""
    _assert_same_merge(llama_dense, ["a0", "a1", "a2"], merger)


@pytest.mark.parametrize("merger", SPECTRAL, ids=_id)
def test_spectral_merge_of_rank_deficient_adapters_equals_merge_of_fine_tunes(
    llama: dict, merger: Any
) -> None:
    """Adapters of rank 2..8 below TSV-M's budget (min(m, n) / 3 >= 10) and modules some
    adapters leave untouched (zero task vectors; rank-deficient sums): with rank-revealing
    backbones on both paths the factored merge equals the merge of the materialised
    fine-tunes (1e-5, float32), docs/lora.md "Rank-deficient task vectors"."""
    _assert_same_merge(llama["root"], sorted(LLAMA_ADAPTERS), merger)


def test_adapters_and_full_fine_tunes_mix(llama: dict) -> None:
    """One adapter and two full checkpoints in one merge equal three full checkpoints."""
    root = llama["root"]
    got = _merge(root, ["full-patterns", "plain", "full-rslora"], "task_arithmetic")
    want = _merge(root, ["full-patterns", "full-plain", "full-rslora"], "task_arithmetic")
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0, msg=key)


def test_merged_adapter_loads_in_peft_and_forward_matches(llama: dict, tmp_path: Path) -> None:
    """output: {format: lora, rank: R} writes an adapter PEFT loads; its forward equals the
    base with the rank-R truncation of every merged target delta (and lm_head whole)."""
    root = llama["root"]
    names = sorted(LLAMA_ADAPTERS)
    rank = 3
    full = _merge(root, names, "task_arithmetic")
    cfg = _config(root, names, "task_arithmetic", output={"format": "lora", "rank": rank})
    report = MergePipeline.from_config(cfg).run(tmp_path / "merged")
    errors = report["lora_output"]["relative_truncation_error"]
    assert len(errors) == report["lora_output"]["target_modules"] > 0
    assert any(e > 1e-3 for e in errors.values())  # rank 3 < the summed ranks: truncated

    base_sd = llama["base"]
    expected = {}
    targets = json.loads((tmp_path / "merged" / "adapter_config.json").read_text())[
        "target_modules"
    ]
    for key, w0 in base_sd.items():
        module = key[: -len(".weight")]
        if module in targets:
            d = (full[key].double() - w0.double())
            U, S, Vh = torch.linalg.svd(d, full_matrices=False)
            dr = (U[:, :rank] * S[:rank]) @ Vh[:rank]
            want_err = float(torch.linalg.vector_norm(S[rank:]) / torch.linalg.vector_norm(S))
            assert errors[module] == pytest.approx(want_err, abs=1e-6)
            expected[key] = (w0.double() + dr).float()
        elif key.startswith("lm_head."):
            expected[key] = full[key]
        else:
            expected[key] = w0
    reference = _llama()
    reference.load_state_dict(expected)
    model = peft.PeftModel.from_pretrained(_llama(), str(tmp_path / "merged")).eval()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)


def test_apply_adapter_builds_the_fine_tuned_model(llama: dict) -> None:
    """apply_adapter(base model, folder) gives PEFT's merged weights (for covariances)."""
    model = _llama()
    apply_adapter(model, llama["root"] / "rslora")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, llama["merged"]["rslora"][key], atol=1e-6, rtol=0)


def _write_adapter(folder: Path, config: dict[str, Any], tensors: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors or {}, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"peft_type": "LORA", "r": 4, "use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "IA3"),
        ({"peft_type": "PROMPT_TUNING"}, "PROMPT_TUNING"),
        ({"peft_type": "LOHA"}, "LOHA"),
    ],
)
def test_non_low_rank_variants_are_refused_by_name(
    llama: dict, tmp_path: Path, config: dict, needle: str
) -> None:
    folder = _write_adapter(tmp_path / "bad", config)
    base = FileTensorSource(llama["root"] / "base", "base")
    with pytest.raises(CheckpointError, match=needle) as err:
        LoraAdapterSource(folder, base, "model 'bad'")
    assert "model 'bad'" in str(err.value)


def test_adapter_for_another_base_is_a_clear_problem(llama: dict, tmp_path: Path) -> None:
    folder = _write_adapter(
        tmp_path / "other",
        {"peft_type": "LORA", "r": 2, "lora_alpha": 2},
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 16),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(32, 2),
        },
    )
    cfg = _config(llama["root"], ["plain"], "task_arithmetic")
    cfg["models"].append({"name": "other", "path": str(folder)})
    with pytest.raises(Exception, match=r"B A gives a \[32, 16\] delta"):
        MergePipeline.from_config(cfg).plan()


def test_lora_output_refuses_deltas_it_cannot_hold(llama: dict, tmp_path: Path) -> None:
    """A full fine-tune changes tensors no adapter targets: the adapter output refuses,
    and nothing is written."""
    root = llama["root"]
    cfg = _config(
        root, ["plain", "full-rslora"], "task_arithmetic", output={"format": "lora", "rank": 2}
    )
    with pytest.raises(InputError, match="neither a LoRA target"):
        MergePipeline.from_config(cfg).run(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())


def test_pave_with_adapter_covariances_equals_pave_on_fine_tunes(llama_dense: Path) -> None:
    """Covariances collected on base + adapter (apply_adapter) and PAVE on the adapters
    give the merge of PAVE on the materialised fine-tunes with the same covariances."""
    from pactframe.covariance import collect_covariances

    root = llama_dense
    g = torch.Generator().manual_seed(7)
    batches = [{"input_ids": torch.randint(0, 64, (2, 9), generator=g)} for _ in range(3)]
    for name in ("a0", "a1", "a2"):
        model = apply_adapter(_llama(), root / name)
        # the fine-tuned model is exactly PEFT's merged checkpoint
        full = transformers.LlamaForCausalLM.from_pretrained(str(root / f"full-{name}"))
        for key, value in full.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=0)
        collect_covariances(model, batches, include=r"self_attn|mlp").save(
            root / f"cov-{name}.safetensors"
        )

    def merge(prefix: str) -> dict[str, torch.Tensor]:
        # float64 PAVE: the two routes to the same task vectors differ by float32
        # rounding, which PAVE's C^-1 on these few-token covariances amplifies
        cfg = _config(
            root, [], "task_arithmetic", preprocessors=[{"name": "pave", "precision": "float64"}]
        )
        cfg["models"] = [
            {
                "name": n,
                "path": str(root / f"{prefix}{n}"),
                "covariance": str(root / f"cov-{n}.safetensors"),
            }
            for n in ("a0", "a1", "a2")
        ]
        return MergePipeline.from_config(cfg).merge_to_dict()[0]

    got, want = merge(""), merge("full-")
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0, msg=key)
    plain = _merge(root, ["a0", "a1", "a2"], "task_arithmetic")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert float((plain[q] - got[q]).abs().max()) > 1e-4  # PAVE did change the merge


def test_slerp_and_dare_on_adapters_equal_them_on_fine_tunes(llama: dict) -> None:
    """SLERP (one model) and DARE (seeded masks) see the same task vectors either way."""
    root = llama["root"]
    _assert_same_merge(root, ["rslora"], "slerp")
    _assert_same_merge(
        root, sorted(LLAMA_ADAPTERS), "task_arithmetic", preprocessors=["dare"]
    )


def _weights_digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix == ".safetensors" or p.name == "adapter_config.json"
    }


@pytest.mark.parametrize("fmt", ["model", "lora"])
def test_adapters_under_the_processes_executor_write_the_local_bytes(
    llama: dict, tmp_path: Path, fmt: str
) -> None:
    """Workers in other processes open the adapters themselves (models[].type / the
    folder's adapter_config.json) and merge them factored; a full model and a merged
    adapter (whose deltas the workers return) are byte-identical to the local run's."""
    from pactframe.api import load_spec
    from pactframe.registry import build_registry

    root = llama["root"]
    extra: dict[str, Any] = {"seed": 1}
    if fmt == "lora":
        extra["output"] = {"format": "lora", "rank": 3}
    cfg = _config(
        root, sorted(LLAMA_ADAPTERS), {"name": "pact_tsv_m", "core_rank": 2, "task_rank": 2},
        **extra,
    )
    registry = build_registry()
    outs = {}
    for key, ex in (
        ("local", {"name": "local", "threads": 1}),
        ("processes", {"name": "processes", "workers": 2, "threads": 1}),
    ):
        spec = load_spec(cfg, registry=registry)
        pipe = MergePipeline(spec, executor=registry.build("executor", ex))
        outs[key] = tmp_path / key
        report = pipe.run(outs[key])
        assert report["executor"]["name"] == key
    assert len(report["executor"]["workers"]) == 2  # the processes run's report
    factored = [
        e["name"]
        for e in report["tensors"]
        for r in e.get("records", [])
        if r["source"] == "pact" and r["data"].get("factored")
    ]
    assert "model.layers.0.self_attn.q_proj.weight" in factored  # merged from the factors
    digests = _weights_digest(outs["local"])
    assert ("adapter_model.safetensors" in digests) == (fmt == "lora")
    assert digests == _weights_digest(outs["processes"])


def _nan_adapter(tmp_path: Path) -> Path:
    a = torch.ones(2, 32)
    a[1, 5] = float("nan")
    return _write_adapter(
        tmp_path / "nan",
        {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]},
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(32, 2),
        },
    )


def test_adapter_tensors_follow_the_nonfinite_policy(llama: dict, tmp_path: Path) -> None:
    """A NaN in an adapter factor is a NonFiniteError naming the model, the tensor and
    the adapter file (nonfinite: error); nonfinite: warn merges with a warning."""
    from pactframe.errors import NonFiniteError, NonFiniteWarning

    folder = _nan_adapter(tmp_path)
    cfg = _config(llama["root"], ["plain"], "task_arithmetic")
    cfg["models"].append({"name": "nan", "path": str(folder)})
    with pytest.raises(NonFiniteError) as err:
        MergePipeline.from_config(cfg).merge_to_dict()
    text = str(err.value)
    assert "model 'nan'" in text and "q_proj.weight (lora_A)" in text
    assert "adapter_model.safetensors" in text
    with pytest.warns(NonFiniteWarning, match="model 'nan'"):
        state, _ = MergePipeline.from_config(dict(cfg, nonfinite="warn")).merge_to_dict()
    assert bool(torch.isnan(state["model.layers.0.self_attn.q_proj.weight"]).any())


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'{"r": 4, "r": 8}', "adapter_config.json.* repeats the key"),
        (b"{\"r\": NaN}", "adapter_config.json.* NaN"),
    ],
)
def test_adapter_config_is_read_as_untrusted_json(
    llama: dict, tmp_path: Path, raw: bytes, needle: str
) -> None:
    """adapter_config.json: strict JSON (no duplicate keys, no NaN), an object; each
    problem a CheckpointError naming the adapter."""
    folder = _write_adapter(tmp_path / "cfg", {})
    (folder / "adapter_config.json").write_bytes(raw)
    base = FileTensorSource(llama["root"] / "base", "base")
    with pytest.raises(CheckpointError, match=needle) as err:
        LoraAdapterSource(folder, base, "model 'cfg'")
    assert "model 'cfg'" in str(err.value)


def test_adapter_config_symlink_out_of_the_folder_is_refused(
    llama: dict, tmp_path: Path
) -> None:
    """adapter_config.json and the weights must lie inside the adapter folder."""
    folder = _write_adapter(tmp_path / "link", {"peft_type": "LORA", "r": 2})
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").symlink_to(outside)
    base = FileTensorSource(llama["root"] / "base", "base")
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        LoraAdapterSource(folder, base, "model 'link'")

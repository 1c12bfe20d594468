"""Fine-tunes with added tokens (embedding and output head with more rows than the
base): ``vocab: base`` and ``vocab: union`` on a generated Llama-shaped checkpoint whose
tokenizer files add tokens, loaded back with transformers and run for one forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pactframe.api import merge
from pactframe.config import ConfigProblems
from pactframe.errors import InputError
from tests._optional import require

transformers = require("transformers", "hf")
tokenizers = require("tokenizers", "hf")

WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far"]
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def make_tokenizer(added: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if added:
        fast.add_tokens(added)
    return fast


def make_model(folder: Path, seed: int, added: list[str], base: Path | None = None) -> Path:
    """A 2-layer Llama (hidden 16) with len(WORDS) + len(added) token rows."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS) + len(added),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    if base is not None:  # a "fine-tune": the base's weights plus a small change
        state = load_file(str(base / "model.safetensors"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in state:
                    rows = state[name].shape[0]
                    p[:rows] = state[name] + 0.01 * torch.randn_like(state[name])
    model.save_pretrained(folder)
    make_tokenizer(added).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base = make_model(root / "base", 0, [])
    a = make_model(root / "a", 1, ["<tool>", "<think>"], base)
    b = make_model(root / "b", 2, ["<tool>"], base)
    c = make_model(root / "c", 3, ["<image>"], base)
    return root, base, a, b, c


def cfg(base, models, **extra):
    return {
        "base": str(base),
        "models": [{"name": p.name, "path": str(p)} for p in models],
        "merger": {"name": "task_arithmetic", "scaling": 1.0},
        **extra,
    }


def run_forward(folder: Path, text: str) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert bool(torch.isfinite(logits).all())
    return ids


def test_without_vocab_the_error_says_to_set_it(zoo, tmp_path):
    _, base, a, b, _ = zoo
    with pytest.raises(ConfigProblems, match="vocab: base"):
        merge(cfg(base, [a, b]), tmp_path / "out")


def test_vocab_base_drops_the_added_rows_and_reports_it(zoo, tmp_path):
    _, base, a, b, _ = zoo
    report = merge(cfg(base, [a, b], vocab="base"), tmp_path / "out")
    assert any("dropped 2 added row(s) of model 'a'" in n for n in report["notes"])
    assert any("dropped 1 added row(s) of model 'b'" in n for n in report["notes"])
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert out[EMBED].shape[0] == len(WORDS)
    sb, sa, sbb = (load_file(str(p / "model.safetensors")) for p in (base, a, b))
    ref = sb[EMBED] + (sa[EMBED][: len(WORDS)] - sb[EMBED]) + (sbb[EMBED][: len(WORDS)] - sb[EMBED])
    torch.testing.assert_close(out[EMBED], ref, rtol=1e-6, atol=1e-6)
    run_forward(tmp_path / "out", "the cat sat")


def test_vocab_union_keeps_added_rows_and_matching_tokenizer(zoo, tmp_path):
    _, base, a, b, _ = zoo
    report = merge(cfg(base, [a, b], vocab="union"), tmp_path / "out")
    assert any("kept 2 added row(s)" in n for n in report["notes"])
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    sb, sa, sbb = (load_file(str(p / "model.safetensors")) for p in (base, a, b))
    n = len(WORDS)
    for key in (EMBED, HEAD):
        assert out[key].shape[0] == n + 2
        # shared rows: the recipe (task arithmetic, scaling 1)
        ref = sb[key] + (sa[key][:n] - sb[key]) + (sbb[key][:n] - sb[key])
        torch.testing.assert_close(out[key][:n], ref, rtol=1e-6, atol=1e-6)
        # <tool> (both models): their mean; <think> (only a): a's row
        torch.testing.assert_close(
            out[key][n], (sa[key][n] + sbb[key][n]) / 2, rtol=1e-6, atol=1e-6
        )
        torch.testing.assert_close(out[key][n + 1], sa[key][n + 1], rtol=1e-6, atol=1e-6)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == n + 2
    ids = run_forward(tmp_path / "out", "the cat <think> <tool>")
    assert ids[0].tolist()[-2:] == [n + 1, n]


def test_vocab_union_refuses_different_tokens_at_one_id(zoo, tmp_path):
    _, base, a, _, c = zoo
    with pytest.raises(InputError, match=r"id 12: '<tool>' in a, '<image>' in c"):
        merge(cfg(base, [a, c], vocab="union"), tmp_path / "out")

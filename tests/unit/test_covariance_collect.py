"""Covariance collection: hooks give X^T X / N of each weight's real inputs.

The references recompute every layer's input by hand in numpy (matrix products,
a hand-written multi-head attention), independently of the hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pactframe.covariance import collect_covariances, is_conv1d
from pactframe.errors import InputError

E, HEADS, D_IN, D_CONV = 8, 2, 6, 5


class Conv1D(nn.Module):
    """Mimics transformers.pytorch_utils.Conv1D: y = x W + b with W stored (nx, nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(nf, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.reshape(*x.shape[:-1], self.nf)


class TinyBlock(nn.Module):
    """Linear -> self-attention (batch_first) -> GELU -> Conv1D -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(D_IN, E)
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.conv = Conv1D(D_CONV, E)
        self.head = nn.Linear(D_CONV, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h)
        return self.head(torch.nn.functional.gelu(self.conv(a)))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _attention_context(q_in, k_in, v_in, wq, wk, wv, bq, bk, bv, heads):
    """Hand-written multi-head attention output before out_proj; inputs (B, L, E)."""
    q, k, v = q_in @ wq.T + bq, k_in @ wk.T + bk, v_in @ wv.T + bv
    b, lq, e = q.shape
    lk = k.shape[1]
    d = e // heads

    def split(x, n):
        return x.reshape(b, n, heads, d).transpose(0, 2, 1, 3)

    att = _softmax(split(q, lq) @ split(k, lk).transpose(0, 1, 3, 2) / np.sqrt(d))
    return (att @ split(v, lk)).transpose(0, 2, 1, 3).reshape(b, lq, e)


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _xtx(rows: np.ndarray) -> np.ndarray:
    x = rows.reshape(-1, rows.shape[-1])
    return x.T @ x / x.shape[0]


def _reference_inputs(model: TinyBlock, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each captured weight's input, recomputed by hand."""
    h = x @ _np(model.embed.weight).T + _np(model.embed.bias)
    w_in, b_in = _np(model.attn.in_proj_weight), _np(model.attn.in_proj_bias)
    ctx = _attention_context(
        h,
        h,
        h,
        w_in[:E],
        w_in[E : 2 * E],
        w_in[2 * E :],
        b_in[:E],
        b_in[E : 2 * E],
        b_in[2 * E :],
        HEADS,
    )
    a = ctx @ _np(model.attn.out_proj.weight).T + _np(model.attn.out_proj.bias)
    c = _gelu(a @ _np(model.conv.weight) + _np(model.conv.bias))
    return {
        "embed.weight": x,
        "attn.in_proj_weight": h,
        "attn.out_proj.weight": ctx,
        "conv.weight": a,
        "head.weight": c,
    }


@pytest.fixture
def model() -> TinyBlock:
    torch.manual_seed(0)
    return TinyBlock().double()


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((6, 7, D_IN))


def test_covariance_equals_hand_computed_inputs_xtx(model, data):
    """Linear, packed self-attention in/out projections and Conv1D all equal X^T X / N."""
    batches = [torch.from_numpy(data[i : i + 2]) for i in range(0, 6, 2)]
    result = collect_covariances(model, batches, dtype=torch.float64)
    expected = _reference_inputs(model, data)
    assert sorted(result.covariances) == sorted(expected)
    assert result.skipped == {}
    for key, rows in expected.items():
        np.testing.assert_allclose(_np(result.covariances[key]), _xtx(rows), rtol=1e-10, atol=1e-12)
        assert result.num_samples[key] == 6 * 7
    assert result.layouts["conv.weight"] == "conv1d"
    assert result.covariances["conv.weight"].shape == (E, E)  # d_in = weight.shape[0]
    assert all(result.layouts[k] == "linear" for k in expected if k != "conv.weight")


def test_batch_split_and_streaming_do_not_change_the_covariance(model, data):
    """One batch, six batches, and a lazy generator give the same matrices."""
    whole = collect_covariances(model, [torch.from_numpy(data)], dtype=torch.float64)
    split = collect_covariances(
        model, [torch.from_numpy(data[i : i + 1]) for i in range(6)], dtype=torch.float64
    )
    lazy = collect_covariances(
        model, (torch.from_numpy(data[i : i + 3]) for i in (0, 3)), dtype=torch.float64
    )
    for key, cov in whole.covariances.items():
        for other in (split, lazy):
            torch.testing.assert_close(other.covariances[key], cov, rtol=1e-12, atol=1e-13)
            assert other.num_samples[key] == whole.num_samples[key]


def test_max_tokens_keeps_the_first_rows_and_stops_early(model, data):
    """max_tokens = 10 uses the first 10 token rows; later batches are not run."""
    calls = []

    def batches():
        for i in range(6):
            calls.append(i)
            yield torch.from_numpy(data[i : i + 1])

    result = collect_covariances(
        model, batches(), max_tokens=10, include=r"^embed", dtype=torch.float64
    )
    first_rows = data.reshape(-1, D_IN)[:10]
    np.testing.assert_allclose(
        _np(result.covariances["embed.weight"]), _xtx(first_rows), rtol=1e-12
    )
    assert result.num_samples == {"embed.weight": 10}
    assert calls == [0, 1]  # 7 + 3 rows: the third batch is never drawn


def test_include_exclude_select_weights(model, data):
    result = collect_covariances(
        model, [torch.from_numpy(data)], include=r"attn|conv", exclude=r"out_proj"
    )
    assert sorted(result.covariances) == ["attn.in_proj_weight", "conv.weight"]


def test_float32_output_and_model_left_unchanged(model, data):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = collect_covariances(model, [torch.from_numpy(data)])
    assert all(c.dtype == torch.float32 for c in result.covariances.values())
    assert model.training, "the training flag must be restored"
    assert not model.attn._forward_hooks and not model.attn._forward_pre_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"collection modified {k}"


class CrossAttention(nn.Module):
    """Queries from one stream, keys/values from another (seq-first layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(D_IN, E)
        self.kv = nn.Linear(D_IN, E)
        self.attn = nn.MultiheadAttention(E, HEADS)  # batch_first=False: (L, B, E)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q, kv = self.q(x), self.kv(y)
        return self.attn(q, kv, kv)[0]


def test_cross_attention_skips_packed_in_proj_but_captures_out_proj_exactly():
    """Different q and k/v inputs: in_proj_weight is listed as skipped, out_proj is exact."""
    torch.manual_seed(2)
    model = CrossAttention().double()
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 2, D_IN)), rng.standard_normal((4, 2, D_IN))  # (L, B, d)
    result = collect_covariances(
        model, [(torch.from_numpy(x), torch.from_numpy(y))], dtype=torch.float64
    )
    assert "attn.in_proj_weight" in result.skipped
    assert "cross-attention" in result.skipped["attn.in_proj_weight"]
    assert "attn.in_proj_weight" not in result.covariances
    w, b = _np(model.attn.in_proj_weight), _np(model.attn.in_proj_bias)
    q = (x @ _np(model.q.weight).T + _np(model.q.bias)).transpose(1, 0, 2)  # (B, L, E)
    kv = (y @ _np(model.kv.weight).T + _np(model.kv.bias)).transpose(1, 0, 2)
    ctx = _attention_context(
        q, kv, kv, w[:E], w[E : 2 * E], w[2 * E :], b[:E], b[E : 2 * E], b[2 * E :], HEADS
    )
    np.testing.assert_allclose(
        _np(result.covariances["attn.out_proj.weight"]), _xtx(ctx), rtol=1e-10
    )
    assert result.num_samples["attn.out_proj.weight"] == 5 * 2


class SeparateProjections(nn.Module):
    """MultiheadAttention with kdim/vdim: separate q/k/v projection weights."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, kdim=3, vdim=4, batch_first=True)

    def forward(self, q, k, v):
        return self.attn(q, k, v)[0]


def test_separate_qkv_projection_weights_get_their_own_inputs():
    torch.manual_seed(4)
    model = SeparateProjections().double()
    rng = np.random.default_rng(5)
    q, k, v = (
        rng.standard_normal((2, 5, E)),
        rng.standard_normal((2, 6, 3)),
        rng.standard_normal((2, 6, 4)),
    )
    batch = {"q": torch.from_numpy(q), "k": torch.from_numpy(k), "v": torch.from_numpy(v)}
    result = collect_covariances(model, [batch], dtype=torch.float64)
    assert result.skipped == {}
    for key, rows in (
        ("attn.q_proj_weight", q),
        ("attn.k_proj_weight", k),
        ("attn.v_proj_weight", v),
    ):
        np.testing.assert_allclose(_np(result.covariances[key]), _xtx(rows), rtol=1e-12)
    a = model.attn
    b = _np(a.in_proj_bias)
    ctx = _attention_context(
        q,
        k,
        v,
        _np(a.q_proj_weight),
        _np(a.k_proj_weight),
        _np(a.v_proj_weight),
        b[:E],
        b[E : 2 * E],
        b[2 * E :],
        HEADS,
    )
    np.testing.assert_allclose(
        _np(result.covariances["attn.out_proj.weight"]), _xtx(ctx), rtol=1e-10
    )


class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(D_IN, 4)
        self.unused = nn.Linear(D_IN, 4)

    def forward(self, x):
        return self.used(x)


def test_weights_whose_module_never_runs_are_listed_as_skipped():
    model = WithUnusedLayer().double()
    result = collect_covariances(model, [torch.randn(3, D_IN, dtype=torch.float64)])
    assert list(result.covariances) == ["used.weight"]
    assert "never fired" in result.skipped["unused.weight"]


def test_conv1d_detection_needs_name_nf_and_weight_shape():
    assert is_conv1d(Conv1D(4, 3))
    assert not is_conv1d(nn.Linear(3, 4))
    fake = Conv1D(4, 3)
    fake.nf = 5  # weight (3, 4) does not match nf
    assert not is_conv1d(fake)


@pytest.mark.parametrize(
    ("kwargs", "batches", "match"),
    [
        ({}, [], "empty"),
        ({}, [object()], "must be a tensor"),
        ({"max_tokens": 0}, [torch.zeros(1, D_IN)], "max_tokens"),
        ({"include": "("}, [torch.zeros(1, D_IN)], "regular expression"),
        ({"include": "nothing-matches"}, [torch.zeros(1, D_IN)], "nothing to collect"),
        ({"dtype": torch.float16}, [torch.zeros(1, D_IN)], "dtype"),
    ],
)
def test_bad_input_raises_input_error(kwargs, batches, match):
    with pytest.raises(InputError, match=match):
        collect_covariances(WithUnusedLayer(), batches, **kwargs)


def test_transformer_encoder_padding_packed_into_nested_tensors_counts_real_tokens_only():
    """nn.TransformerEncoder in eval mode packs a padded batch into nested tensors: the
    collector sees only the 13 real tokens, and layer 0's in/out projections match X^T X / N
    of the real tokens and of a hand-written attention over each unpadded sequence."""
    torch.manual_seed(6)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, HEADS, 16, batch_first=True, dropout=0.0), 2
    ).double()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, E))
    lengths = [3, 5, 5]
    mask = torch.tensor([[j >= n for j in range(5)] for n in lengths])
    result = collect_covariances(enc, [(torch.from_numpy(x), None, mask)], dtype=torch.float64)
    assert result.skipped == {}
    assert set(result.num_samples.values()) == {13}
    real = np.concatenate([x[i, :n] for i, n in enumerate(lengths)])
    key = "layers.0.self_attn."
    np.testing.assert_allclose(
        _np(result.covariances[key + "in_proj_weight"]), _xtx(real), rtol=1e-10
    )
    attn = enc.layers[0].self_attn
    w, b = _np(attn.in_proj_weight), _np(attn.in_proj_bias)
    ctx = np.concatenate(
        [
            _attention_context(
                s, s, s, w[:E], w[E : 2 * E], w[2 * E :], b[:E], b[E : 2 * E], b[2 * E :], HEADS
            )[0]
            for s in (x[i : i + 1, :n] for i, n in enumerate(lengths))
        ]
    )
    np.testing.assert_allclose(
        _np(result.covariances[key + "out_proj.weight"]), _xtx(ctx), rtol=1e-9
    )

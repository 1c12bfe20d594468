"""Unit tests of the ``pact`` preprocessor and the ``intrusion_energy`` evaluator:
hand-worked examples, decomposer calls and seeds, configs, errors, pass-through rules."""

from __future__ import annotations

import json
from typing import ClassVar

import attrs
import pytest
import torch
from pactframe_plugins.decomposers.exact_svd import ExactSVD
from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD
from pactframe_plugins.evaluators.intrusion_energy import IntrusionEnergy
from pactframe_plugins.preprocessors.pact import DEFAULT_EXCLUDE, PACTAligner

from pactframe import Decomposer, LayerBundle, build_registry
from pactframe.cli import main as cli_main
from pactframe.errors import InputError, InvalidParameterError
from pactframe.seeding import derive_seed
from pactframe.testing import check_component, sample_bundles

F64 = torch.float64


@attrs.frozen
class CountingSVD(Decomposer):
    """Exact SVD that records every call: (shape, rank, generator's initial seed)."""

    name: ClassVar[str] = "counting_svd"
    calls: list = attrs.field(factory=list, eq=False)

    def decompose(self, matrix, rank=None, *, covariance=None, generator=None):
        seed = None if generator is None else generator.initial_seed()
        self.calls.append((tuple(matrix.shape), rank, seed))
        return ExactSVD().decompose(matrix, rank)


def bundle(tasks, base=None, name="layers.0.mlp.weight", seed=0) -> LayerBundle:
    tasks = [torch.as_tensor(t, dtype=F64) for t in tasks]
    base = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=F64)) if base is None else base
    return LayerBundle(name, base, tasks, [f"t{i}" for i in range(len(tasks))], seed=seed)


# ------------------------------------------------------------------ hand-worked examples
def test_hand_worked_each_task_loses_only_the_other_tasks_relied_core_direction():
    """W_0 = diag(3, 2, 1), K = 1 -> V_0K = e1. Delta_1's top right singular vector is e2
    (k = 1), so V_rel_1 = e1; Delta_2's is e3, so V_rel_2 = e1. Each task loses its e1
    column: Delta_1 has none (unchanged); Delta_2's first column [0, 1, 0] is removed."""
    d1 = [[0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    d2 = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    out = PACTAligner(core_rank=1, task_rank=1).preprocess(bundle([d1, d2]))
    torch.testing.assert_close(out.task_vectors[0], torch.tensor(d1, dtype=F64))
    want = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=F64)
    torch.testing.assert_close(out.task_vectors[1], want)
    data = out.records[-1].data
    assert data["right"]["relied_dims"] == {"t0": 1, "t1": 1}
    assert data["removed_energy"] == {"t0": 0.0, "t1": pytest.approx(1.0 / 10.0)}


def test_hand_worked_a_task_that_rewrites_the_core_protects_nothing():
    """If Delta_2's own top direction is e1 = V_0K, then V_rel_2 = orth((I - e1 e1^T) e1)
    is empty: task 1 has nothing to protect against and is returned unchanged, while task
    2 is still filtered against V_rel_1 = e1 (its e1 column goes)."""
    d1 = [[0.0, 2.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    d2 = [[5.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    out = PACTAligner(core_rank=1, task_rank=1).preprocess(bundle([d1, d2]))
    torch.testing.assert_close(out.task_vectors[0], torch.tensor(d1, dtype=F64))
    want = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(out.task_vectors[1], want)
    assert out.records[-1].data["right"]["relied_dims"] == {"t0": 1, "t1": 0}


def test_a_protect_space_that_fills_the_input_space_gives_exact_zeros():
    """d_in = 3, K = 3, k = 1, T = 3 (K + (T-1) k >= d_in): each task's protect space is
    R^3, so every filtered task vector is exactly 0 (not rounding noise, whose direction
    a backbone would then flatten or orthogonalise), and so is every preset's merge."""
    from pactframe_plugins.mergers.pact_presets import PRESETS

    gen = torch.Generator().manual_seed(0)
    tasks = [torch.randn(4, 3, generator=gen, dtype=F64) for _ in range(3)]
    base = torch.randn(4, 3, generator=gen, dtype=F64)
    b = bundle(tasks, base=base)
    out = PACTAligner(core_rank=3, task_rank=1).preprocess(b)
    assert out.records[-1].data["right"]["protect_dims"] == {"t0": 3, "t1": 3, "t2": 3}
    assert all(not bool(tv.any()) for tv in out.task_vectors)
    left = PACTAligner(core_rank=3, task_rank=1, side="left").preprocess(bundle(
        [t.T.contiguous() for t in tasks], base=base.T.contiguous()))
    assert all(not bool(tv.any()) for tv in left.task_vectors)
    for preset in PRESETS:
        assert not bool(preset(core_rank=3, task_rank=1).merge(b).delta.any()), preset.name


def test_hand_worked_left_side_removes_rows():
    """side='left' is the same construction on the output side: with the transposed
    inputs of the first example, Delta_2's row along e1 is removed."""
    d1 = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    d2 = [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    out = PACTAligner(core_rank=1, task_rank=1, side="left").preprocess(bundle([d1, d2]))
    torch.testing.assert_close(out.task_vectors[0], torch.tensor(d1, dtype=F64))
    want = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=F64)
    torch.testing.assert_close(out.task_vectors[1], want)


# ------------------------------------------------------------------ decompositions
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("side", ["right", "both"])
def test_decomposer_is_called_exactly_T_plus_1_times_per_filtered_tensor(num_tasks, side):
    """One call for W_0 (rank K) and one per task vector (rank k), each with the
    generator derived from (bundle.seed, "pact", i) - whatever the side."""
    counter = CountingSVD()
    b = sample_bundles(num_tasks=num_tasks)[0]
    PACTAligner(core_rank=4, task_rank=2, side=side, decomposer=counter).preprocess(b)
    assert len(counter.calls) == num_tasks + 1
    assert [c[1] for c in counter.calls] == [4] + [2] * num_tasks
    assert [c[2] for c in counter.calls] == [
        derive_seed(b.seed, "pact", i) for i in range(num_tasks + 1)
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: sample_bundles(num_tasks=1)[0],  # T = 1
        lambda: sample_bundles()[1],  # 1-D bias
        lambda: attrs.evolve(sample_bundles()[0], name="model.embed_tokens.weight"),
    ],
    ids=["single-task", "bias", "excluded"],
)
def test_tensors_passed_through_cost_no_decomposition(make):
    counter = CountingSVD()
    PACTAligner(decomposer=counter).preprocess(make())
    assert counter.calls == []


def test_randomized_decomposer_is_seeded_per_tensor():
    """Efficient PACT is deterministic for a bundle seed, and close to exact PACT on a
    small full-rank example (its sketch covers the 8 columns, so it is exact here)."""
    b = sample_bundles()[0]
    fast = PACTAligner(core_rank=3, task_rank=2, decomposer=RandomizedSVD())
    a, again = fast.preprocess(b), fast.preprocess(b)
    exact = PACTAligner(core_rank=3, task_rank=2).preprocess(b)
    for x, y, z in zip(a.task_vectors, again.task_vectors, exact.task_vectors):
        assert torch.equal(x, y)
        torch.testing.assert_close(x, z, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ configs and validation
def test_efficient_pact_is_one_config_word():
    registry = build_registry()
    pact = registry.build("preprocessor", {"name": "pact", "decomposer": "randomized_svd"})
    assert isinstance(pact, PACTAligner) and isinstance(pact.decomposer, RandomizedSVD)
    tuned = registry.build(
        "preprocessor",
        {
            "name": "pact",
            "core_rank": 20,
            "decomposer": {"name": "randomized_svd", "oversampling": 5},
        },
    )
    assert tuned.core_rank == 20 and tuned.decomposer.oversampling == 5
    assert PACTAligner().to_config()["decomposer"] == {"name": "exact_svd"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"core_rank": -1}, r"'core_rank' parameter of PACTAligner must be an int in \[0, inf\)"),
        ({"task_rank": 1.5}, r"'task_rank' parameter of PACTAligner must be an int"),
        ({"side": "top"}, r"'side' parameter of PACTAligner must be one of .*Got 'top'"),
        ({"exclude": "(embed"}, r"'exclude' parameter of PACTAligner must be a valid regular"),
        ({"orth_method": "lu"}, r"'orth_method' parameter of PACTAligner must be one of"),
    ],
)
def test_bad_parameters_name_the_parameter_and_the_value(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        PACTAligner(**kwargs)


def test_a_covariance_decomposer_is_refused_with_the_alternatives():
    registry = build_registry()
    message = "'decomposer' parameter of PACTAligner.*exact_svd"
    with pytest.raises(InvalidParameterError, match=message):
        registry.build("preprocessor", {"name": "pact", "decomposer": "co_svd"})
    with pytest.raises(InvalidParameterError, match="'decomposer' parameter of IntrusionEnergy"):
        registry.build("evaluator", {"name": "intrusion_energy", "decomposer": "co_svd"})


# ------------------------------------------------------------------ bad input
def test_zero_base_is_an_input_error_naming_the_tensor():
    """The released code's defect (a zero 'pre-trained' tensor, whose SVD is an
    arbitrary identity basis) is refused, naming the tensor and what to do."""
    b = attrs.evolve(sample_bundles()[0], base=torch.zeros(10, 8, dtype=F64))
    message = r"'layers\.0\.linear\.weight'.*all zeros.*real pre-trained"
    with pytest.raises(InputError, match=message):
        PACTAligner().preprocess(b)


def test_non_finite_base_is_an_input_error_naming_the_tensor():
    base = sample_bundles()[0].base.clone()
    base[0, 0] = float("nan")
    b = attrs.evolve(sample_bundles()[0], base=base)
    with pytest.raises(InputError, match=r"'layers\.0\.linear\.weight'.*NaN or inf"):
        PACTAligner().preprocess(b)


# ------------------------------------------------------------------ which tensors PACT touches
@pytest.mark.parametrize(
    "name",
    [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "classifier.head.weight",
        "vision_model.post_layernorm.weight",
        "visual.ln_post.weight",
        "text_projection",
        "logit_scale",
        "model.norm.weight",
    ],
)
def test_default_exclusions_pass_through_unchanged_with_a_record(name):
    b = attrs.evolve(sample_bundles()[0], name=name)
    out = PACTAligner().preprocess(b)
    assert all(torch.equal(x, y) for x, y in zip(out.task_vectors, b.task_vectors))
    (record,) = out.records
    assert record.source == "pact" and record.data["action"] == "passed_through"
    assert DEFAULT_EXCLUDE in record.data["reason"]


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "transformer.h.0.mlp.c_fc.weight",
    ],
)
def test_transformer_weights_are_filtered(name):
    b = attrs.evolve(sample_bundles()[0], name=name)
    out = PACTAligner(core_rank=3, task_rank=2).preprocess(b)
    assert out.records[-1].data["action"] == "filtered"
    assert not torch.equal(out.task_vectors[0], b.task_vectors[0])


def test_custom_exclude_pattern_and_non_matrix_records():
    w, bias = sample_bundles()
    out = PACTAligner(exclude=r"linear").preprocess(w)
    assert "'linear'" in out.records[-1].data["reason"]
    out = PACTAligner().preprocess(bias)
    reason = "not a matrix (shape [8])"
    assert out.records[-1].data == {"action": "passed_through", "reason": reason}
    assert all(torch.equal(x, y) for x, y in zip(out.task_vectors, bias.task_vectors))


def test_filtered_record_is_json_and_says_what_was_done():
    b = sample_bundles(num_tasks=3)[0]
    data = PACTAligner(core_rank=3, task_rank=2, side="both").preprocess(b).records[-1].data
    json.dumps(data)
    assert data["action"] == "filtered" and data["side"] == "both"
    assert data["decomposer"] == "exact_svd" and (data["core_rank"], data["task_rank"]) == (3, 2)
    for side in ("right", "left"):
        assert data[side]["core_dim"] == 3
        assert set(data[side]["relied_dims"]) == {"task0", "task1", "task2"}
        # K + (T-1) k = 7 and (T-1) K = 6 bound every protect space
        assert all(0 < p <= 6 for p in data[side]["protect_dims"].values())
    assert all(0.0 < e < 1.0 for e in data["removed_energy"].values())


def test_ranks_are_absolute_and_clipped_to_the_matrix():
    counter = CountingSVD()
    b = sample_bundles()[0]  # 10 x 8
    out = PACTAligner(core_rank=50, task_rank=30, decomposer=counter).preprocess(b)
    assert {c[1] for c in counter.calls} == {8}
    assert out.records[-1].data["core_rank"] == 8


def test_half_precision_is_computed_in_float32_and_returned_in_half():
    b = sample_bundles()[0]
    half = b.map_tensors(lambda x: x.to(torch.bfloat16))
    out = PACTAligner(core_rank=3, task_rank=2).preprocess(half)
    ref = PACTAligner(core_rank=3, task_rank=2).preprocess(half.map_tensors(lambda x: x.float()))
    for got, want in zip(out.task_vectors, ref.task_vectors):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, want.to(torch.bfloat16))


def test_plain_qr_option_keeps_the_surplus_columns_of_the_released_code():
    """With T = 3, K = 4, k = 1 the union of two relied spaces has 8 columns but rank
    <= K + (T-1) k = 6. The rank-revealing default keeps 6 directions; orth_method='qr'
    (released code) keeps all 8, two of them determined by rounding noise."""
    b = sample_bundles(num_tasks=3)[0]
    svd = PACTAligner(core_rank=4, task_rank=1).preprocess(b).records[-1].data
    qr = PACTAligner(core_rank=4, task_rank=1, orth_method="qr").preprocess(b).records[-1].data
    assert set(svd["right"]["protect_dims"].values()) == {6}
    assert set(qr["right"]["protect_dims"].values()) == {8}


# ------------------------------------------------------------------ contract and CLI
@pytest.mark.parametrize(
    "component",
    [
        PACTAligner(),
        PACTAligner(core_rank=3, task_rank=2, decomposer=RandomizedSVD()),
        PACTAligner(core_rank=2, task_rank=1, side="both"),
        PACTAligner(core_rank=2, task_rank=1, side="left", orth_method="qr"),
        IntrusionEnergy(),
        IntrusionEnergy(core_rank=3, decomposer=RandomizedSVD()),
    ],
    ids=repr,
)
def test_contract_checks_pass(component):
    check_component(component)


def test_plugins_command_lists_pact_presets_and_intrusion_energy(capsys):
    assert cli_main(["plugins"]) == 0
    text = capsys.readouterr().out
    for name in (
        "pact ",
        "pact_task_arithmetic",
        "pact_iso_c ",
        "pact_iso_cts",
        "pact_tsv_m",
        "intrusion_energy",
    ):
        assert f"  {name}" in text

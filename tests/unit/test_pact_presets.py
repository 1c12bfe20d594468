"""The four PACT presets: one name or one short config, parameters passed to the right
component, PACT's record first, non-matrix tensors through the backbone's fallback."""

from __future__ import annotations

import pytest
import torch
from pactframe_plugins.decomposers.randomized_svd import RandomizedSVD
from pactframe_plugins.mergers._common import resolve_route
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.pact_presets import (
    PACTTSVM,
    PRESETS,
    PACTIsoC,
    PACTIsoCTS,
    PACTTaskArithmetic,
)
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic
from pactframe_plugins.mergers.tsv_m import TSVM
from pactframe_plugins.preprocessors.pact import PACTAligner

from pactframe import build_registry
from pactframe.errors import InvalidParameterError
from pactframe.testing import check_component, sample_bundles

CASES = [
    (PACTTaskArithmetic, TaskArithmetic(scaling=0.7), {"scaling": 0.7}),
    (PACTIsoC, IsoC(scaling=1.3), {"scaling": 1.3}),
    (
        PACTIsoCTS,
        IsoCTS(scaling=0.9, common_space_fraction=0.5),
        {"scaling": 0.9, "common_space_fraction": 0.5},
    ),
    (
        PACTTSVM,
        TSVM(scaling=1.1, rank_split="balanced"),
        {"scaling": 1.1, "rank_split": "balanced"},
    ),
]
CASE_IDS = [preset.name for preset, _, _ in CASES]


@pytest.mark.parametrize("preset, backbone, backbone_kwargs", CASES, ids=CASE_IDS)
def test_preset_is_pact_then_its_backbone_with_each_parameter_routed(
    preset, backbone, backbone_kwargs
):
    """preset(**pact, **backbone).merge(b) == backbone.merge(PACTAligner(**pact).preprocess(b))."""
    pact_kwargs = {"core_rank": 3, "task_rank": 2, "side": "both"}
    b = sample_bundles(num_tasks=3)[0]
    merger = preset(**pact_kwargs, **backbone_kwargs)
    assert merger.aligner == PACTAligner(**pact_kwargs)
    assert merger.merger == backbone
    got = merger.merge(b)
    want = backbone.merge(PACTAligner(**pact_kwargs).preprocess(b))
    torch.testing.assert_close(got.delta, want.delta, rtol=0, atol=0)
    assert got.records[0].source == "pact" and got.records[0].data["action"] == "filtered"
    assert [r.source for r in got.records[1:]] == [r.source for r in want.records]


@pytest.mark.parametrize("preset, backbone, backbone_kwargs", CASES, ids=CASE_IDS)
def test_non_matrix_tensors_go_to_the_backbone_unchanged(preset, backbone, backbone_kwargs):
    bias = sample_bundles(num_tasks=3)[1]
    got = preset(**backbone_kwargs).merge(bias)
    torch.testing.assert_close(got.delta, backbone.merge(bias).delta, rtol=0, atol=0)
    assert got.records[0].data["action"] == "passed_through"


def test_efficient_pact_tsvm_is_one_short_config():
    merger = build_registry().build(
        "merger", {"name": "pact_tsv_m", "decomposer": "randomized_svd", "scaling": 1.0}
    )
    assert isinstance(merger, PACTTSVM)
    assert isinstance(merger.aligner.decomposer, RandomizedSVD)
    # the same decomposer reaches the backbone: Efficient PACT end to end (issue 13)
    assert merger.merger == TSVM(scaling=1.0, decomposer=RandomizedSVD())
    assert resolve_route(merger.merger.route, merger.merger.decomposer) == "gram"


@pytest.mark.parametrize("name", ["pact_tsv_m", "pact_iso_c", "pact_iso_cts"])
def test_preset_decomposer_is_one_parameter_shared_by_pact_and_backbone(name):
    merger = build_registry().build("merger", {"name": name, "decomposer": "randomized_svd"})
    assert [p.name for p in type(merger).parameters()].count("decomposer") == 1
    assert merger.aligner.decomposer == merger.merger.decomposer == RandomizedSVD()


def test_presets_are_registered_under_the_paper_names():
    names = build_registry().names("merger")
    for preset in PRESETS:
        assert preset.name in names
    assert [p.name for p in PRESETS] == [
        "pact_task_arithmetic",
        "pact_iso_c",
        "pact_iso_cts",
        "pact_tsv_m",
    ]


def test_presets_validate_like_their_parts():
    with pytest.raises(InvalidParameterError, match="'core_rank' parameter of PACTIsoC"):
        PACTIsoC(core_rank=-2)
    with pytest.raises(InvalidParameterError, match="'rank_split' parameter of PACTTSVM"):
        PACTTSVM(rank_split="ceil")
    with pytest.raises(InvalidParameterError, match="'decomposer' parameter of PACTIsoCTS"):
        build_registry().build("merger", {"name": "pact_iso_cts", "decomposer": "co_svd"})


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_contract_checks_pass(preset):
    check_component(preset)
    check_component(preset(core_rank=3, task_rank=2, decomposer=RandomizedSVD()))

"""CPU and CUDA agree for every merger of the family and for DARE (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pactframe_plugins.mergers.average import WeightAveraging
from pactframe_plugins.mergers.emr import EMR
from pactframe_plugins.mergers.iso_c import IsoC
from pactframe_plugins.mergers.iso_cts import IsoCTS
from pactframe_plugins.mergers.task_arithmetic import TaskArithmetic
from pactframe_plugins.mergers.ties import TIES
from pactframe_plugins.mergers.tsv_m import TSVM
from pactframe_plugins.preprocessors.dare import DARE

from tests.property._strategies_mergers import bundle_from_arrays

MERGERS = [
    WeightAveraging(),
    TaskArithmetic(),
    TIES(),
    TIES(trim_scope="global"),
    EMR(),
    TSVM(),
    IsoC(),
    IsoCTS(),
]


def _bundles():
    rng = np.random.default_rng(0)
    return [
        bundle_from_arrays([rng.standard_normal((12, 9)) for _ in range(3)], name="w", seed=1),
        bundle_from_arrays([rng.standard_normal(9) for _ in range(3)], name="b", seed=2),
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("merger", MERGERS, ids=lambda m: m.name)
def test_cpu_and_cuda_merges_agree(merger):
    cpu = _bundles()
    cuda = [b.map_tensors(lambda x: x.to("cuda")) for b in cpu]
    state_cpu = merger.prepare(cpu) if merger.needs_prepass else None
    state_cuda = merger.prepare(cuda) if merger.needs_prepass else None
    for a, b in zip(cpu, cuda):
        out_cpu, out_cuda = merger.merge(a, state_cpu), merger.merge(b, state_cuda)
        assert out_cuda.delta.device.type == "cuda"
        torch.testing.assert_close(out_cuda.delta.cpu(), out_cpu.delta, rtol=1e-9, atol=1e-10)
        for t in range(a.num_tasks):
            torch.testing.assert_close(
                out_cuda.task_delta(t).cpu(), out_cpu.task_delta(t), rtol=1e-9, atol=1e-10
            )


@pytest.mark.gpu
def test_dare_masks_are_identical_on_cpu_and_cuda():
    for bundle in _bundles():
        cpu = DARE(drop_probability=0.7).preprocess(bundle)
        cuda = DARE(drop_probability=0.7).preprocess(bundle.map_tensors(lambda x: x.to("cuda")))
        for x, y in zip(cpu.task_vectors, cuda.task_vectors):
            assert y.device.type == "cuda"
            assert torch.equal(x, y.cpu())

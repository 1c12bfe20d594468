"""DARE: Drop And REscale task vectors (Yu et al., ICML 2024)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, Preprocessor, Record, hookimpl, param
from pactframe.seeding import generator
from pactframe.validation import instance_of, real


@attrs.frozen
class DARE(Preprocessor):
    """DARE: drop each task-vector entry with probability ``p``, rescale survivors by ``1/(1-p)``.

    Yu et al., "Language Models are Super Mario: Absorbing Abilities from
    Homologous Models as a Free Lunch", ICML 2024, Sec. 3 (DARE):
    ``m_t ~ Bernoulli(p)`` elementwise, ``Delta_t' = (1 - m_t) * Delta_t / (1 - p)``,
    so ``E[Delta_t'] = Delta_t``. Authors' code ``yule-BUAA/MergeLM``
    ``model_merging_methods/mask_weights_utils.py::mask_input_with_mask_rate``
    (no rescale when ``p = 1``, everything is dropped).

    Applied to every floating tensor of any shape (MergeLM applies it per
    parameter tensor, FusionBench ``only_on_linear_weights: false``); integer and
    boolean buffers pass through unchanged. DARE only rewrites the task vectors:
    follow it with any merger (``task_arithmetic`` for DARE-TA, ``ties`` for
    DARE-TIES).

    Randomness: task ``t`` of tensor ``name`` draws ``u ~ U[0, 1)`` (float32, on CPU,
    then moved to the tensor's device) from ``pactframe.seeding.generator(seed,
    "dare", task_name)``, where ``seed`` is the bundle's per-tensor seed (derived by
    the pipeline from the run seed and ``name``); an entry survives when
    ``u >= p``. The result therefore depends neither on the order in which
    tensors are processed nor on the order in which tasks are listed.

    Knob mapping: ``drop_probability`` = FusionBench ``sparsity_ratio`` = MergeLM
    ``weight_mask_rate`` (``1 - density`` in mergekit's ``dare_*`` methods);
    ``rescale`` = FusionBench ``rescale`` = MergeLM ``use_weight_rescale`` (whose
    CLI default is False: set it explicitly there). Shapes are unchanged.
    """

    name: ClassVar[str] = "dare"

    drop_probability: float = param(
        0.5,
        validator=real(0.0, 1.0),
        help="probability p of dropping each task-vector entry (FusionBench sparsity_ratio)",
    )
    rescale: bool = param(
        True,
        validator=instance_of(bool, "a bool"),
        help="divide the surviving entries by 1 - p (keeps E[Delta] unchanged)",
    )

    def keep_mask(self, bundle: LayerBundle, task: int) -> torch.Tensor:
        """Boolean survival mask of task ``task`` (same shape and device as the tensor)."""
        tv = bundle.task_vectors[task]
        g = generator(bundle.seed, self.name, bundle.task_names[task])
        draws = torch.rand(tv.shape, generator=g, dtype=torch.float32)
        return (draws >= self.drop_probability).to(tv.device)

    def preprocess(self, bundle: LayerBundle, state: Any = None) -> LayerBundle:
        if not bundle.base.is_floating_point():
            return bundle
        p = self.drop_probability
        new, kept = [], []
        for t, tv in enumerate(bundle.task_vectors):
            keep = self.keep_mask(bundle, t)
            survivors = tv / (1.0 - p) if self.rescale and p < 1.0 else tv
            new.append(torch.where(keep, survivors, torch.zeros_like(tv)))
            kept.append(round(float(keep.float().mean()), 6) if keep.numel() else 1.0)
        data = {"drop_probability": p, "rescale": self.rescale, "kept_fraction": kept}
        return bundle.with_task_vectors(new, record=Record(self.name, data))


@hookimpl
def pactframe_register_preprocessors() -> list[type[Preprocessor]]:
    return [DARE]

"""The ``nonfinite`` policy: what reading a NaN or infinite float weight does.

A top-level config key (:data:`NONFINITE_POLICIES`): ``error`` (the default)
raises :class:`~pactframe.errors.NonFiniteError`, ``warn`` lets the tensor through
with a :class:`~pactframe.errors.NonFiniteWarning`, ``ignore`` does not check.
Applied by every tensor source as it reads (:mod:`pactframe.sources`,
:mod:`pactframe.lora`); the message names the model, the file and the tensor.
See docs/security.md.
"""

from __future__ import annotations

import warnings

import torch

from pactframe.errors import ConfigError, NonFiniteError, NonFiniteWarning
from pactframe.safetensors_header import shown

#: values of the top-level ``nonfinite`` config key (the first is the default)
NONFINITE_POLICIES = ("error", "warn", "ignore")
#: the policy when the config does not set one (``MergeSpec.nonfinite``, every source)
DEFAULT_NONFINITE = NONFINITE_POLICIES[0]


def check_policy(policy: str) -> str:
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(
            f"nonfinite: must be one of {', '.join(NONFINITE_POLICIES)}; got {shown(policy)}."
        )
    return policy


def nonfinite_problem(tensor: torch.Tensor) -> str | None:
    """``"holds 2 NaN and 1 infinite value(s) (first at index [0, 3])"`` or ``None``."""
    if not tensor.is_floating_point():
        return None
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return None
    nan = int(torch.isnan(tensor).sum())
    inf = int((~finite).sum()) - nan
    first = [int(i) for i in (~finite).nonzero()[0]] if tensor.ndim else []
    return f"holds {nan} NaN and {inf} infinite value(s) (first at index {first})"


def apply_nonfinite_policy(
    tensor: torch.Tensor, policy: str, *, model: str, key: str, file: str | None
) -> None:
    """Check one tensor just read against the ``nonfinite`` policy (see module doc)."""
    if policy == "ignore":
        return
    problem = nonfinite_problem(tensor)
    if problem is None:
        return
    where = f" in {file!r}" if file else ""
    text = f"{model}: tensor {shown(key)}{where} {problem}."
    if policy == "warn":
        warnings.warn(
            f"{text} Merging it anyway (nonfinite: warn); the merged tensor may be NaN too.",
            NonFiniteWarning,
            stacklevel=3,
        )
        return
    raise NonFiniteError(
        f"{text} A merge would spread them into the output (or fail inside an SVD). Repair "
        "or re-export the checkpoint; to merge anyway set `nonfinite: warn` (or `ignore`) "
        "in the config."
    )

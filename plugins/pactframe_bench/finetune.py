"""One fine-tuning loop for both suites: AdamW, linear warm-up then decay, clipping."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


def linear_warmup_decay(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate multiplier: ``step/warmup`` up to ``warmup``, then linear to 0 at ``total``."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def finetune(
    parameters: Sequence[torch.nn.Parameter],
    batches: Iterable[Any],
    loss_fn: Callable[[Any], torch.Tensor],
    *,
    total_steps: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.1,
    clip_norm: float | None = 1.0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Run ``total_steps`` optimiser steps of ``loss_fn(batch)`` over ``batches``.

    The caller puts the model in train mode and seeds dropout / batch order;
    returns the loss of every step.
    """
    params = list(parameters)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, total_steps, warmup_fraction)
    )
    losses: list[float] = []
    for step, batch in enumerate(batches):
        if step >= total_steps:
            break
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return losses

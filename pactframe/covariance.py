"""Collect input covariances ``C = X^T X / N`` of a model's linear weights.

PAVE (Sun et al., "Purifying Task Vectors in Knowledge-Aware Subspace",
Sec. 3.2, eq. 5) and CO-SVD (Yang et al., CorDA, NeurIPS 2024, Sec. 3.2)
decompose ``W C`` where ``C`` is the second moment of the inputs a weight sees
on the fine-tuned model of its task. :func:`collect_covariances` runs the
caller's batches through the model with forward hooks and accumulates, per
weight, ``X^T X`` (``X`` is ``(N, d_in)``: every token is a row, all leading
dimensions flattened) and the token count ``N``, in float64, streaming: no
activation is kept beyond the current batch.

Give it **training or validation** batches of the task the model was
fine-tuned on, never the test split (the released PAVE code collects on the
test split, which leaks test data into the merge).

What is captured, keyed by the weight's state-dict name:

- every ``nn.Linear`` (and subclasses): its input, layout ``"linear"``;
- GPT-2 style ``Conv1D`` (detected without importing transformers: class
  named ``Conv1D`` with an ``nf`` attribute and a 2-D weight of shape
  ``(d_in, nf)``): its input, layout ``"conv1d"``;
- ``nn.MultiheadAttention``, whose projections are used without calling a
  submodule (``in_proj_weight`` is a bare parameter and ``out_proj.forward``
  is never called):

  * ``in_proj_weight`` (packed q/k/v, ``(3E, E)``): the query input, captured
    by a forward pre-hook, when query, key and value are the same tensor
    (self-attention). With different query/key/value inputs (cross-attention)
    one ``E x E`` matrix cannot describe the three projections, and the weight
    is listed in :attr:`CovarianceCollection.skipped`;
  * ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` (modules built
    with ``kdim``/``vdim``): the query, key and value inputs respectively
    (exact in every case);
  * ``out_proj.weight``: the attention output before the output projection,
    obtained by calling the module a second time through
    :func:`torch.func.functional_call` with ``out_proj`` replaced by the
    identity and ``need_weights=False`` (the module is not modified). This
    costs one extra attention forward per call.

Every weight a hook was put on but whose hook never fired (a module whose
``forward`` the model bypasses, e.g. a fused kernel) is listed in
``skipped`` with the reason, never dropped silently. Padding tokens are
counted like any other token: give unpadded (or equal-length) batches if that
matters for your model. Nested tensors (``nn.TransformerEncoder`` packs a
padded batch into them in eval mode) hold only real tokens, and only those are
counted.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from pactframe.covariance_io import save_covariances
from pactframe.errors import InputError

__all__ = [
    "CovarianceCollection",
    "collect_covariances",
    "is_conv1d",
]


def is_conv1d(module: nn.Module) -> bool:
    """True for GPT-2 style ``Conv1D`` modules (``y = x W + b``, ``W`` is ``(d_in, nf)``)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and weight.shape[1] == module.nf
    )


@attrs.frozen(eq=False)
class CovarianceCollection:
    """The result of :func:`collect_covariances`.

    Attributes:
        covariances: weight key -> ``C = X^T X / N``, ``(d_in, d_in)``, on CPU.
        layouts: weight key -> ``"linear"`` or ``"conv1d"``.
        num_samples: weight key -> token count ``N``.
        skipped: weight key -> why no covariance could be captured for it.
    """

    covariances: dict[str, torch.Tensor]
    layouts: dict[str, str]
    num_samples: dict[str, int]
    skipped: dict[str, str]

    def save(self, path: Any, *, source: str | None = None) -> None:
        """Write the covariance file (format of :mod:`pactframe.covariance_io`)."""
        save_covariances(path, self.covariances, self.layouts, self.num_samples, source=source)


class _Accumulator:
    """Streaming ``X^T X`` and row count in float64, optionally capped at ``max_tokens`` rows."""

    def __init__(self, d_in: int, max_tokens: int | None) -> None:
        self.d_in = d_in
        self.max_tokens = max_tokens
        self.xtx: torch.Tensor | None = None
        self.count = 0

    @property
    def full(self) -> bool:
        return self.max_tokens is not None and self.count >= self.max_tokens

    def add(self, x: torch.Tensor, key: str) -> None:
        rows = _token_rows(x.detach())
        if rows.shape[-1] != self.d_in:
            raise InputError(
                f"Covariance collection: weight {key!r} expects inputs with last dimension "
                f"{self.d_in}; the forward pass gave rows of width {rows.shape[-1]}."
            )
        if self.max_tokens is not None:
            rows = rows[: self.max_tokens - self.count]
        if rows.shape[0] == 0:
            return
        rows = rows.to(torch.float64)
        if self.xtx is None:
            self.xtx = torch.zeros(self.d_in, self.d_in, dtype=torch.float64, device=rows.device)
        self.xtx.addmm_(rows.transpose(0, 1), rows)
        self.count += int(rows.shape[0])


def _token_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(tokens, features)``: leading dimensions flattened. Nested tensors
    (``nn.TransformerEncoder`` packs padded batches into them in eval mode) hold
    only the real tokens, which are concatenated; padding never enters."""
    if x.is_nested:
        return torch.cat([t.reshape(-1, t.shape[-1]) for t in x.unbind()])
    return x.reshape(-1, x.shape[-1])


def _bind(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The forward call's arguments by parameter name (positional ones included)."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    return dict(bound.arguments)


def _same_input(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


class _Collector:
    """Holds the accumulators and the hooks of one collection run."""

    def __init__(self, max_tokens: int | None) -> None:
        self.max_tokens = max_tokens
        self.acc: dict[str, _Accumulator] = {}
        self.layouts: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.handles: list[Any] = []
        self._recomputing = False

    # ------------------------------------------------------------ registration
    def _track(self, key: str, d_in: int, layout: str) -> None:
        self.acc[key] = _Accumulator(d_in, self.max_tokens)
        self.layouts[key] = layout

    def _add(self, key: str, x: torch.Tensor) -> None:
        if key in self.acc and not self.acc[key].full:
            self.acc[key].add(x, key)

    def _skip(self, key: str, reason: str) -> None:
        self.acc.pop(key, None)
        self.skipped.setdefault(key, reason)

    def watch_input(self, module: nn.Module, key: str, d_in: int, layout: str) -> None:
        """A weight applied to the module's first positional input (Linear, Conv1D)."""
        self._track(key, d_in, layout)

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                self._add(key, args[0])
            else:
                self._skip(key, "its forward was called without a tensor as first argument")

        self.handles.append(module.register_forward_pre_hook(hook))

    def watch_attention(
        self, module: nn.MultiheadAttention, prefix: str, wanted: Callable[[str], bool]
    ) -> None:
        """``nn.MultiheadAttention``: inputs by a pre-hook, ``out_proj`` by recomputation."""
        if module._qkv_same_embed_dim:
            inputs = {f"{prefix}in_proj_weight": "packed"}
        else:
            inputs = {
                f"{prefix}q_proj_weight": "query",
                f"{prefix}k_proj_weight": "key",
                f"{prefix}v_proj_weight": "value",
            }
        inputs = {k: v for k, v in inputs.items() if wanted(k)}
        for key in inputs:
            weight = module.get_parameter(key[len(prefix) :])
            self._track(key, int(weight.shape[1]), "linear")
        out_key = f"{prefix}out_proj.weight"
        if wanted(out_key):
            self._track(out_key, int(module.out_proj.weight.shape[1]), "linear")

        def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._recomputing:
                return
            call = _bind(mod, args, kwargs)
            q, k, v = call["query"], call["key"], call["value"]
            for key, role in inputs.items():
                if role == "packed":
                    if _same_input(q, k) and _same_input(q, v):
                        self._add(key, q)
                    else:
                        self._skip(
                            key,
                            "query, key and value inputs differ (cross-attention): one input "
                            "covariance cannot describe the packed q/k/v projection",
                        )
                else:
                    self._add(key, {"query": q, "key": k, "value": v}[role])

        def post_hook(
            mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            if self._recomputing or out_key not in self.acc or self.acc[out_key].full:
                return
            call = _bind(mod, args, kwargs)
            call["need_weights"] = False
            w, b = module.out_proj.weight, module.out_proj.bias
            identity = {"out_proj.weight": torch.eye(w.shape[1], dtype=w.dtype, device=w.device)}
            if b is not None:
                identity["out_proj.bias"] = torch.zeros_like(b)
            self._recomputing = True
            try:
                context, _ = torch.func.functional_call(mod, identity, (), call)
            finally:
                self._recomputing = False
            self._add(out_key, context)

        self.handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        self.handles.append(module.register_forward_hook(post_hook, with_kwargs=True))

    # ------------------------------------------------------------ results
    @property
    def all_full(self) -> bool:
        return bool(self.acc) and all(a.full for a in self.acc.values())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def result(self, dtype: torch.dtype) -> CovarianceCollection:
        covs: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for key in sorted(self.acc):
            a = self.acc[key]
            if a.xtx is None or a.count == 0:
                self.skipped.setdefault(
                    key, "its hook never fired: the model's forward never used this weight's module"
                )
                continue
            covs[key] = (a.xtx / a.count).to(device="cpu", dtype=dtype)
            counts[key] = a.count
        layouts = {k: self.layouts[k] for k in covs}
        return CovarianceCollection(covs, layouts, counts, dict(sorted(self.skipped.items())))


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise InputError(
        f"Covariance collection: a batch must be a tensor, a tuple/list of positional "
        f"arguments or a dict of keyword arguments for the model's forward; got "
        f"{type(batch).__name__}."
    )


def _matcher(include: str | None, exclude: str | None) -> Callable[[str], bool]:
    patterns = []
    for label, pattern in (("include", include), ("exclude", exclude)):
        try:
            patterns.append(None if pattern is None else re.compile(pattern))
        except re.error as exc:
            raise InputError(
                f"Covariance collection: the {label} pattern {pattern!r} is not a valid "
                f"regular expression ({exc})."
            ) from exc
    inc, exc_ = patterns

    def wanted(key: str) -> bool:
        return (inc is None or inc.search(key) is not None) and (
            exc_ is None or exc_.search(key) is None
        )

    return wanted


def collect_covariances(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    include: str | None = None,
    exclude: str | None = None,
    max_tokens: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> CovarianceCollection:
    """Run ``batches`` through ``model`` and return each linear weight's ``X^T X / N``.

    Args:
        model: the fine-tuned model of one task. It is run under
            ``torch.no_grad()`` in eval mode (its training flag is restored
            afterwards); it is not modified.
        batches: the task's **training or validation** inputs (never the test
            split), each whatever ``model``'s forward takes: a tensor
            (``model(batch)``), a tuple/list (``model(*batch)``) or a dict of
            keyword arguments (``model(**batch)``). Batches must already be on
            the model's device.
        include: regular expression; only weight keys it matches (``re.search``)
            are captured. ``None`` captures every supported weight.
        exclude: regular expression; weight keys it matches are not captured.
        max_tokens: keep at most this many token rows per weight (the first
            ones seen, as the PAVE code's ``num_examples``); iteration stops
            once every weight has them. ``None`` uses every token.
        dtype: dtype of the returned matrices (accumulation is in float64).

    Returns:
        A :class:`CovarianceCollection`; ``.save(path)`` writes the file the
        merge pipeline reads beside the task's checkpoint.
    """
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InputError(
            f"Covariance collection: max_tokens must be a positive int or None; got {max_tokens!r}."
        )
    if dtype not in (torch.float32, torch.float64):
        raise InputError(
            f"Covariance collection: dtype must be torch.float32 or torch.float64; got {dtype}."
        )
    wanted = _matcher(include, exclude)
    collector = _Collector(max_tokens)
    attention_owned: set[int] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            attention_owned.add(id(module.out_proj))
            collector.watch_attention(module, f"{prefix}." if prefix else "", wanted)
    for prefix, module in model.named_modules():
        key = f"{prefix}.weight" if prefix else "weight"
        if id(module) in attention_owned or not wanted(key):
            continue
        if isinstance(module, nn.Linear):
            collector.watch_input(module, key, module.in_features, "linear")
        elif is_conv1d(module):
            collector.watch_input(module, key, int(module.weight.shape[0]), "conv1d")
    if not collector.acc:
        raise InputError(
            "Covariance collection: the model has no nn.Linear, Conv1D or MultiheadAttention "
            f"weight matching include={include!r} / exclude={exclude!r}; nothing to collect."
        )
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in _iterate(batches):
                _call(model, batch)
                seen += 1
                if collector.all_full:
                    break
    finally:
        collector.remove()
        model.train(was_training)
    if seen == 0:
        raise InputError(
            "Covariance collection: the batch iterable was empty; give at least one batch of "
            "training or validation inputs."
        )
    return collector.result(dtype)


def _iterate(batches: Iterable[Any]) -> Iterator[Any]:
    try:
        iterator = iter(batches)
    except TypeError as exc:
        raise InputError(
            f"Covariance collection: batches must be an iterable of model inputs; got "
            f"{type(batches).__name__}."
        ) from exc
    yield from iterator

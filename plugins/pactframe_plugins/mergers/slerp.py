"""SLERP: spherical linear interpolation between the base and one fine-tune."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from pactframe import LayerBundle, MergedTensor, Merger, Record, hookimpl, param
from pactframe.errors import InputError, InvalidParameterError
from pactframe.validation import real

#: a layer index in a state-dict key: ``model.layers.12.``, ``transformer.h.3.``...
DEFAULT_LAYER_PATTERN = r"\.(?:layers|layer|h|blocks|block)\.(\d+)\."
_PRE_LAYER = re.compile(r"embed|wte|wpe|word_embeddings")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(value: Any) -> str | None:
    if _is_number(value):
        return None
    if isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
        return None
    return "a number or a non-empty list of numbers (a gradient over the layers)"


def _check_t(instance: Any, attribute: Any, value: Any) -> None:
    def fail(why: str) -> None:
        raise InvalidParameterError(
            f"The 't' parameter of {type(instance).__name__} must be a number in [0, 1], a "
            "gradient list of numbers, or a list of {filter: SUBSTRING, value: ...} entries "
            f"(mergekit's form); {why}. Got {value!r} instead."
        )

    if _check_value(value) is None:
        return
    if not isinstance(value, (list, tuple)) or not value:
        fail("it is neither")
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping) or "value" not in entry:
            fail(f"entry {i} is not a mapping with 'value'")
        extra = set(entry) - {"filter", "value"}
        if extra:
            fail(f"entry {i} has unknown key(s) {sorted(extra)}")
        if entry.get("filter") is not None and not isinstance(entry["filter"], str):
            fail(f"entry {i}'s filter is not a string")
        why = _check_value(entry["value"])
        if why is not None:
            fail(f"entry {i}'s value must be {why}")


def _is_gradient(t: Any) -> bool:
    if isinstance(t, (list, tuple)):
        return all(_is_number(v) for v in t) or any(
            isinstance(e, Mapping) and isinstance(e.get("value"), (list, tuple)) for e in t
        )
    return False


def gradient_value(values: Sequence[float], position: float) -> float:
    """A gradient list read at ``position`` in [0, 1]: piecewise-linear between
    equally spaced anchors (mergekit's ``evaluate_setting`` for number lists)."""
    if len(values) == 1:
        return float(values[0])
    scaled = position * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1.0 - frac) * float(values[i0]) + frac * float(values[i1])


def slerp_vectors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float, eps: float = 1e-8
) -> tuple[torch.Tensor, bool, float]:
    """``(result, used_lerp, angle)``: spherical interpolation of the flattened ``v0``,
    ``v1`` (Shoemake 1985): with ``cos(Omega) = <v0/|v0|, v1/|v1|>``,
    ``slerp = sin((1-t) Omega)/sin(Omega) v0 + sin(t Omega)/sin(Omega) v1``; when
    ``|cos(Omega)| > dot_threshold`` (near-colinear, ``sin(Omega) ~ 0``) it is
    the linear interpolation ``(1-t) v0 + t v1``. Norms below ``eps`` are not
    divided (as mergekit)."""
    n0, n1 = torch.linalg.vector_norm(v0), torch.linalg.vector_norm(v1)
    u0 = v0 / n0 if float(n0) > eps else v0
    u1 = v1 / n1 if float(n1) > eps else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > dot_threshold:
        return torch.lerp(v0, v1, t), True, 0.0
    omega = math.acos(max(-1.0, min(1.0, dot)))
    sin_omega = math.sin(omega)
    s0 = math.sin((1.0 - t) * omega) / sin_omega
    s1 = math.sin(t * omega) / sin_omega
    return v0 * s0 + v1 * s1, False, omega


@attrs.frozen
class SLERP(Merger):
    """Spherical linear interpolation between the base ``theta_0`` and ONE fine-tune
    ``theta_1``, per tensor: ``theta = slerp(t, theta_0, theta_1)``.

    Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985, Sec. 3
    (the slerp formula); applied to model weights tensor by tensor as in
    mergekit's ``slerp`` (Goddard et al., "Arcee's MergeKit", 2024): each tensor
    is one flattened vector, ``t = 0`` gives the base, ``t = 1`` the fine-tune, and
    near-colinear tensors (``|cos| > dot_threshold``, default mergekit's 0.9995)
    use linear interpolation. The merged delta is ``slerp(...) - theta_0``.

    ``t`` is a number, a gradient list (anchors spread evenly over the layers and
    interpolated linearly), or mergekit's list of ``{filter, value}`` entries: the
    first entry whose ``filter`` is a substring of the tensor name (or has no
    filter, or ``"*"``) gives the value. Gradients need ``num_layers``; a tensor
    in layer ``i`` (found with ``layer_pattern``) reads the gradient at
    ``i / (num_layers - 1)``; tensors outside the layers read it at 0 when their
    name says embedding (``embed``, ``wte``, ``wpe``), else at 1 (final norm, output
    head), as mergekit's pre- and post-layer weights. No per-model weights (the
    method has ``t`` instead). See docs/mergers/slerp.md.
    """

    name: ClassVar[str] = "slerp"
    exact_models: ClassVar[int | None] = 1

    t: Any = param(
        0.5,
        validator=_check_t,
        help="interpolation factor: a number, a gradient list, or [{filter, value}] entries",
    )
    num_layers: int | None = param(
        None, help="number of transformer layers (needed when t has gradient lists)"
    )
    layer_pattern: str = param(
        DEFAULT_LAYER_PATTERN, help="regex whose group 1 is a tensor's layer index"
    )
    dot_threshold: float = param(
        0.9995,
        validator=real(0.0, 1.0, closed="both"),
        help="|cos| above which the tensors count as colinear and are lerped",
    )

    def __attrs_post_init__(self) -> None:
        if self.num_layers is not None and (
            isinstance(self.num_layers, bool)
            or not isinstance(self.num_layers, int)
            or self.num_layers < 1
        ):
            raise InvalidParameterError(
                f"The 'num_layers' parameter of SLERP must be an int >= 1. Got "
                f"{self.num_layers!r} instead."
            )
        if _is_gradient(self.t) and self.num_layers is None:
            raise InvalidParameterError(
                "The 't' parameter of SLERP has gradient lists, which are read per layer: set "
                "num_layers (the model's num_hidden_layers; `pactframe convert` fills it in "
                "from config.json for mergekit configs)."
            )
        try:
            re.compile(self.layer_pattern)
        except re.error as exc:
            raise InvalidParameterError(
                f"The 'layer_pattern' parameter of SLERP must be a regex; got "
                f"{self.layer_pattern!r} ({exc})."
            ) from exc

    def position(self, name: str) -> float:
        """Where tensor ``name`` reads a gradient, in [0, 1]."""
        match = re.search(self.layer_pattern, name)
        if match is None:
            return 0.0 if _PRE_LAYER.search(name) else 1.0
        n = self.num_layers or 1
        index = int(match.group(1))
        if index >= n:
            raise InputError(
                f"Tensor {name!r} is in layer {index}, but slerp has num_layers={n}; set "
                "num_layers to the model's number of layers."
            )
        return index / (n - 1) if n > 1 else 1.0

    def t_for(self, name: str) -> float:
        """The interpolation factor of tensor ``name``."""
        setting = self.t
        if isinstance(setting, (list, tuple)) and setting and isinstance(setting[0], Mapping):
            for entry in setting:
                flt = entry.get("filter")
                if flt is None or flt == "*" or flt in name:
                    setting = entry["value"]
                    break
            else:
                filters = [e.get("filter") for e in self.t]
                raise InputError(
                    f"slerp: no 't' entry matches tensor {name!r} (filters {filters}); add a "
                    "last entry without a filter, e.g. {value: 0.5}."
                )
        if _is_number(setting):
            return float(setting)
        return gradient_value(setting, self.position(name))

    def merge(self, bundle: LayerBundle, state: Any = None) -> MergedTensor:
        if bundle.num_tasks != 1:
            raise InputError(
                f"slerp interpolates the base and exactly one fine-tuned model; tensor "
                f"{bundle.name!r} has {bundle.num_tasks} ({list(bundle.task_names)}). List one "
                "model, or use linear / task_arithmetic for more."
            )
        t = self.t_for(bundle.name)
        v0 = bundle.base
        v1 = bundle.base + bundle.task_vectors[0]
        merged, lerped, omega = slerp_vectors(t, v0, v1, self.dot_threshold)
        record = Record(self.name, {"t": round(t, 6), "lerp": lerped, "angle": round(omega, 6)})
        return MergedTensor(merged.sub_(v0), records=(record,))


@hookimpl
def pactframe_register_mergers() -> list[type[Merger]]:
    return [SLERP]

"""Parameter validators: what they accept, what they reject, and the
scikit-learn-style message ("The 'rank' parameter of X must be ... Got ... instead.")."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest

from pactframe import MergedTensor, Merger, param
from pactframe.errors import InvalidParameterError, PactframeError
from pactframe.validation import instance_of, integer, one_of, real, regex


@attrs.frozen
class Knobs(Merger):
    """Every validator on one component."""

    name: ClassVar[str] = "knobs"
    rank: int = param(1, validator=integer(1))
    window: int | None = param(None, validator=integer(0, 10, closed="left", optional=True))
    density: float = param(0.5, validator=real(0.0, 1.0, closed="right"))
    alpha: float | None = param(None, validator=real(optional=True))
    mode: str = param("mean", validator=one_of(("sum", "mean")))
    pattern: str | None = param(None, validator=regex(optional=True))
    tags: tuple = param((), validator=instance_of(tuple, "a tuple of strings"))

    def merge(self, bundle: Any, state: Any = None) -> MergedTensor:
        raise NotImplementedError


def test_defaults_are_valid():
    Knobs()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rank", 1),
        ("rank", 10**9),
        ("window", None),
        ("window", 0),
        ("window", 9),
        ("density", 1.0),
        ("density", 1),
        ("density", 1e-12),
        ("alpha", None),
        ("alpha", -3.5),
        ("alpha", 7),
        ("mode", "sum"),
        ("pattern", r"^encoder\.(layer|block)\.\d+"),
        ("pattern", None),
        ("tags", ("a", "b")),
    ],
)
def test_accepts_valid_values(field, value):
    assert getattr(Knobs(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("rank", 0, "an int in [1, inf)"),
        ("rank", 2.0, "an int in [1, inf)"),
        ("rank", True, "an int in [1, inf)"),
        ("rank", "3", "an int in [1, inf)"),
        ("window", 10, "an int in [0, 10) or None"),
        ("window", -1, "an int in [0, 10) or None"),
        ("density", 0.0, "a float in (0, 1]"),
        ("density", 1.5, "a float in (0, 1]"),
        ("density", float("nan"), "a float in (0, 1]"),
        ("density", False, "a float in (0, 1]"),
        ("alpha", float("inf"), "a float in (-inf, inf) or None"),
        ("alpha", "1.0", "a float in (-inf, inf) or None"),
        ("mode", "median", "one of {'mean', 'sum'}"),
        ("pattern", "(unclosed", "a valid regular expression"),
        ("pattern", 3, "a regular expression string"),
        ("tags", ["a"], "a tuple of strings"),
    ],
)
def test_rejects_invalid_values_with_the_template_message(field, value, expected):
    with pytest.raises(InvalidParameterError) as info:
        Knobs(**{field: value})
    message = str(info.value)
    assert message.startswith(f"The {field!r} parameter of Knobs must be {expected}")
    assert message.endswith(f"Got {value!r} instead.")


def test_invalid_parameter_error_is_a_pactframe_error_and_a_value_error():
    with pytest.raises(PactframeError):
        Knobs(rank=-1)
    with pytest.raises(ValueError):
        Knobs(rank=-1)


def test_closed_interval_options():
    @attrs.frozen
    class Bounds:
        both: float = attrs.field(default=0.0, validator=real(0.0, 1.0))
        neither: float = attrs.field(default=0.5, validator=real(0.0, 1.0, closed="neither"))
        left: int = attrs.field(default=0, validator=integer(0, 3, closed="left"))

    Bounds(both=0.0)
    Bounds(both=1.0)
    for bad in (0.0, 1.0):
        with pytest.raises(InvalidParameterError, match=r"must be a float in \(0, 1\)"):
            Bounds(neither=bad)
    Bounds(left=0)
    with pytest.raises(InvalidParameterError, match=r"must be an int in \[0, 3\)"):
        Bounds(left=3)


def test_validators_run_on_evolve():
    knobs = Knobs()
    with pytest.raises(InvalidParameterError, match="'mode' parameter"):
        attrs.evolve(knobs, mode="max")

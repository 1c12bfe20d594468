"""attrs validators with one message template, after scikit-learn's.

``The 'rank' parameter of RandomizedSVD must be an int in [1, inf). Got 0 instead.``
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

from pactframe.errors import InvalidParameterError, short_repr

Validator = Callable[[Any, Any, Any], None]


def _fail(instance: Any, attribute: Any, expected: str, value: Any) -> None:
    raise InvalidParameterError(
        f"The {attribute.name!r} parameter of {type(instance).__name__} must be "
        f"{expected}. Got {short_repr(value)} instead."
    )


def _interval(low: float | None, high: float | None, closed: str) -> str:
    left = "[" if closed in ("both", "left") and low is not None else "("
    right = "]" if closed in ("both", "right") and high is not None else ")"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def _in_interval(value: float, low: float | None, high: float | None, closed: str) -> bool:
    if low is not None:
        if value < low or (value == low and closed not in ("both", "left")):
            return False
    if high is not None:
        if value > high or (value == high and closed not in ("both", "right")):
            return False
    return True


def integer(
    low: int | None = None, high: int | None = None, *, closed: str = "both", optional: bool = False
) -> Validator:
    """An int (not a bool) in the interval; ``None`` allowed when ``optional``."""
    expected = f"an int in {_interval(low, high, closed)}" + (" or None" if optional else "")

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            _fail(instance, attribute, expected, value)
        if not _in_interval(int(value), low, high, closed):
            _fail(instance, attribute, expected, value)

    return check


def real(
    low: float | None = None,
    high: float | None = None,
    *,
    closed: str = "both",
    optional: bool = False,
) -> Validator:
    """A finite real number (int or float, not bool) in the interval."""
    expected = f"a float in {_interval(low, high, closed)}" + (" or None" if optional else "")

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            _fail(instance, attribute, expected, value)
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            _fail(instance, attribute, expected, value)
        if not math.isfinite(number) or not _in_interval(number, low, high, closed):
            _fail(instance, attribute, expected, value)

    return check


def one_of(options: Iterable[Any]) -> Validator:
    """One of a fixed set of values (strings are listed sorted in the message)."""
    choices = tuple(options)
    shown = ", ".join(repr(c) for c in sorted(choices, key=str))
    expected = f"one of {{{shown}}}"

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value not in choices:
            _fail(instance, attribute, expected, value)

    return check


def regex(*, optional: bool = False) -> Validator:
    """A string that compiles as a regular expression."""
    import re

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str):
            _fail(instance, attribute, "a regular expression string", value)
        try:
            re.compile(value)
        except re.error as exc:
            _fail(instance, attribute, f"a valid regular expression ({exc})", value)

    return check


def instance_of(cls: type | tuple[type, ...], description: str) -> Validator:
    """An instance of ``cls``, described in words for the message."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, cls):
            _fail(instance, attribute, description, value)

    return check

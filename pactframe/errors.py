"""Every error pactframe raises on purpose is a :class:`PactframeError`.

Messages follow one template: what went wrong, which object (file, tensor,
plugin, parameter), what was received, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence


class PactframeError(Exception):
    """Base class of all errors raised by pactframe on purpose."""


class InvalidParameterError(PactframeError, ValueError):
    """A component parameter failed validation at construction time."""


class PluginError(PactframeError):
    """A plugin could not be loaded, registered or built."""


class DuplicateComponentError(PluginError):
    """Two plugins register a component of the same kind under the same name."""


class UnknownComponentError(PluginError, KeyError):
    """A component name is not registered for the requested kind."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ContractError(PluginError, TypeError):
    """A plugin returned something that does not honour its contract."""


class InputError(PactframeError, ValueError):
    """Tensors handed to a component do not fit together (shape, dtype, missing context)."""


class ConfigError(PactframeError, ValueError):
    """A merge configuration is invalid."""


class CheckpointError(PactframeError):
    """A checkpoint or covariance file is missing, unreadable or inconsistent."""


class ConfigProblems(ConfigError):
    """A configuration with one or more problems; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str], source: str = "the config") -> None:
        self.problems = list(problems)
        shown = format_problems(self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {source}:\n{shown}")


#: at most this many problems are listed in one message (the rest are counted)
MAX_PROBLEMS_SHOWN = 50


def format_problems(problems: Sequence[str]) -> str:
    """``  - problem`` lines, at most :data:`MAX_PROBLEMS_SHOWN` of them."""
    lines = [f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    return "\n".join(lines)


class NonFiniteError(CheckpointError):
    """A tensor read from a checkpoint holds NaN or infinite values (``nonfinite: error``)."""


class NonFiniteWarning(UserWarning):
    """A tensor read holds NaN or infinite values and ``nonfinite: warn`` lets it through."""


class OutputPathError(PactframeError, ValueError):
    """An output path pactframe refuses to write: it overlaps an input, or it is a
    symbolic link (``--force`` does not override this)."""


#: the longest value an error message shows (see :func:`short_repr`)
SHORT_REPR_LIMIT = 120


def short_repr(value: object, limit: int = SHORT_REPR_LIMIT) -> str:
    """``repr(value)`` bounded in size and time, for error messages.

    Every message that shows a value received from a config or a caller goes
    through here, so a huge or deeply nested value (a YAML alias bomb, a
    megabyte-long string) yields a short message instead of hundreds of MB. Long
    strings, lists and dicts are abbreviated with ``...``; the result is at most
    ``limit`` characters.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel = 3
    r.maxtuple = r.maxlist = r.maxarray = r.maxdict = r.maxset = r.maxfrozenset = 6
    r.maxdeque = 6
    r.maxstring = max(limit - 10, 20)
    r.maxlong = 40
    r.maxother = max(limit - 10, 20)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an int of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = r.repr(value)
    except Exception:  # a value whose repr fails (e.g. an int too long to print)
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        keep = limit - 3
        text = text[: keep - keep // 3] + "..." + text[len(text) - keep // 3 :]
    return text


def short_text(text: str, limit: int = 600) -> str:
    """``text`` cut to at most ``limit`` characters (middle elided), for quoting messages."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = limit - 5
    return text[: keep - keep // 3] + " ... " + text[len(text) - keep // 3 :]


class ExecutorError(PactframeError):
    """An executor could not start, lost a worker, or cannot run this merge."""

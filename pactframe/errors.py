"""Every error pactframe raises on purpose is a :class:`PactframeError`.

Messages follow one template: what went wrong, which object (file, tensor,
plugin, parameter), what was received, and what to do about it.
"""

from __future__ import annotations


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


class ExecutorError(PactframeError):
    """An executor could not start, lost a worker, or cannot run this merge."""

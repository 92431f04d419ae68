"""One root exception and per-area subclasses.

Each area error also inherits the builtin that fits it, so callers that only know the
builtin (``ValueError``, ``RuntimeError``) still catch it, as PyAV does.
"""

from __future__ import annotations


class ExpNetError(Exception):
    """Root of every error raised by expnet-stream."""


class ConfigError(ExpNetError, ValueError):
    """A configuration file, environment override or CLI option is invalid."""


class SchemaError(ExpNetError, ValueError):
    """A message does not match the wire contract (bad msgpack, unknown version, bad field).

    ``reason`` is a short machine-readable code (dead-letter reason, metrics label).
    """

    def __init__(self, message: str, reason: str = "bad_message") -> None:
        super().__init__(message)
        self.reason = reason


class DecodeError(ExpNetError, ValueError):
    """A video packet could not be demuxed or decoded. ``reason`` is a machine-readable code."""

    def __init__(self, message: str, reason: str = "decode_error") -> None:
        super().__init__(message)
        self.reason = reason


class DetectorError(ExpNetError, RuntimeError):
    """A face detector failed to load or to run."""


class ModelError(ExpNetError, ValueError):
    """A model name, checkpoint or preprocessing contract is invalid."""


class ExportError(ExpNetError, RuntimeError):
    """Exporting a model (ONNX) failed or its output disagrees with torch."""


class EngineError(ExpNetError, RuntimeError):
    """An inference engine failed to load or to run."""


class BrokerError(ExpNetError, RuntimeError):
    """The Kafka broker could not be started or reached."""


class PluginError(ExpNetError, LookupError):
    """A plugin could not be found, imported, or is not of the required base class."""


class OptionalDependencyError(ExpNetError, ImportError):
    """A feature needs an optional dependency that is not installed; the message says what to install."""


class TableError(ExpNetError, ValueError):
    """Events cannot be put into the results table (e.g. an emotion class without a column)."""

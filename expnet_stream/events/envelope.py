"""Definitions every event model shares: the envelope base model, the schema versions and the coefficient format.

A leaf module (pydantic and numpy only): :mod:`~expnet_stream.events.schema` and
:mod:`~expnet_stream.events.aggregate_schema` both build on it, and ``schema`` imports ``aggregate_schema`` to
register :class:`~expnet_stream.events.aggregate_schema.EmotionAggregate`, never the other way round. The names are
re-exported by ``schema``, where callers import them from.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["COEFF_DTYPE", "NUM_COEFFS", "SCHEMA_VERSION", "SUPPORTED_VERSIONS"]

SCHEMA_VERSION = 1
"""Version of the message types unchanged since the first release; a type that changed carries its own (e.g.
:class:`~expnet_stream.events.schema.StreamSummary` is version 2) in its ``v`` default."""
#: Versions this release can read. A change of the contract is a new version; old ones stay readable.
SUPPORTED_VERSIONS = frozenset({1, 2})
NUM_COEFFS = 29
COEFF_DTYPE = np.dtype("<f4")


class _Event(BaseModel):
    """Base of every message: frozen, unknown fields refused, and the ``v`` envelope field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: int = Field(SCHEMA_VERSION, description="schema version of this message")

"""Operations settings: the metrics/health endpoint and log format (the ``ops`` section of the worker settings).

Environment overrides follow the worker settings: ``EXPNET_OPS__METRICS_HOST=0.0.0.0`` (containers),
``EXPNET_OPS__METRICS_PORT=0`` (disable), ``EXPNET_OPS__LOG_JSON=true``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OpsSettings(BaseModel):
    """Where a worker serves ``/metrics``, ``/healthz`` and ``/readyz``, and how it judges itself alive and ready."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics_host: str = Field(
        "127.0.0.1",
        description="address the metrics/health server binds; loopback by default, containers set 0.0.0.0",
    )
    metrics_enabled: bool = Field(True, description="serve /metrics, /healthz and /readyz")
    metrics_port: int = Field(
        9400,
        ge=0,
        le=65535,
        description="port of /metrics, /healthz and /readyz; 0 picks a free one and logs it (two workers on one host)",
    )
    liveness_timeout_s: float = Field(
        60.0,
        gt=0,
        description="/healthz fails when the main loop has not ticked for this long (a stuck poll, engine or decoder)",
    )
    ready_requires_partitions: bool = Field(
        True,
        description="/readyz needs at least one assigned partition; set false when replicas may exceed partitions "
        "(idle standby members would otherwise stay unready and stall rolling updates)",
    )
    lag_interval_s: float = Field(
        5.0,
        gt=0,
        description="how often the worker refreshes the per-partition consumer-lag gauge",
    )
    log_json: bool = Field(False, description="log JSON lines (one object per record) instead of text")

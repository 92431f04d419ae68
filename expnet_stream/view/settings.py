"""The view's settings: where it listens, its access token and its bounds (clients, watched streams, memory)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr

TOKEN_ENV = "EXPNET_VIEW_TOKEN"


class ViewSettings(BaseModel):
    """What ``expnet-stream view`` serves and how much it may hold. Every bound is enforced: a client over
    ``max_clients`` gets 429, a stream over ``max_watched`` 503, a stream table over ``max_streams`` forgets the
    stream seen longest ago."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind (loopback by default)")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    token: SecretStr | None = Field(None, description="access token every route asks for (None: no token)")
    group_id: str | None = Field(None, description="the view's consumer group (None: expnet-view-<random>)")
    max_clients: int = Field(16, ge=1, description="push connections (pictures and event streams) at once")
    max_watched: int = Field(4, ge=1, description="streams whose picture is decoded at once")
    max_streams: int = Field(256, ge=1, description="streams the stream table holds")
    forget_after_s: float = Field(300.0, gt=0, description="a stream not heard of for this long leaves the table")
    idle_after_s: float = Field(5.0, gt=0, description="a stream without events for this long shows as idle")
    picture_fps: float = Field(10.0, gt=0, le=60, description="pictures per second sent per watched stream")
    picture_wait_s: float = Field(
        0.6, ge=0, description="how long a decoded frame waits for its frame event before it is drawn without it"
    )
    hold_s: float = Field(0.5, ge=0, description="a frame without its own event shows the last event's faces this long")
    jpeg_quality: int = Field(75, ge=10, le=100, description="JPEG quality of the pictures")
    rewind_records: int = Field(
        600, ge=0, description="input records per partition read back when a picture starts (to find a keyframe)"
    )
    timeline_s: float = Field(60.0, gt=0, description="seconds of per-track emotion history sent to a new page")
    client_queue: int = Field(256, ge=1, description="events queued per client; the oldest are dropped when full")
    backfill_records: int = Field(
        2000, ge=0, description="events per partition read back at start, so streams of the last minutes show"
    )

    @classmethod
    def with_env_token(cls, token: str | None = None, **kwargs: object) -> ViewSettings:
        """Settings whose token is ``token``, else ``$EXPNET_VIEW_TOKEN`` (empty: none)."""
        raw = token if token is not None else os.environ.get(TOKEN_ENV) or None
        return cls(token=SecretStr(raw) if raw else None, **kwargs)

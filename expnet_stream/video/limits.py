"""Default limits on what a stream may ask a decoder for; one source for the worker settings (``decode``) and
:class:`~expnet_stream.video.decode.DecodeLimits` (no FFmpeg import here: the settings load without it)."""

from __future__ import annotations

DEFAULT_CODECS = ("h264", "hevc", "vp8", "vp9", "av1")
DEFAULT_MAX_PIXELS = 3840 * 2160
DEFAULT_MAX_EXTRADATA_BYTES = 64 * 1024

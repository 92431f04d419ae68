"""Event schema (versioned pydantic models) and msgpack codec."""

from .codec import decode as decode
from .codec import decode_as as decode_as
from .codec import encode as encode
from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .schema import DeadLetter as DeadLetter
from .schema import Face as Face
from .schema import FrameEvent as FrameEvent
from .schema import StreamEnd as StreamEnd
from .schema import StreamStart as StreamStart
from .schema import StreamSummary as StreamSummary
from .schema import VideoPacket as VideoPacket
from .schema import frame_event_id as frame_event_id
from .schema import pack_coeffs as pack_coeffs

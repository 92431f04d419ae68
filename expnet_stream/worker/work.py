"""The pipeline's one FIFO queue: a :class:`FrameWork` per decoded frame or stream end, completed in order."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..events.schema import StreamEnd
from ..faces.detections import Detections
from .streams import NO_SOURCE, Source, StreamState


@dataclass
class FrameWork:
    """One queue entry: a decoded frame (or a stream's end). Holds its decoded image only until its faces are found,
    then the crops."""

    stream: StreamState
    pts: int | None = None
    time_base: tuple[int, int] = (1, 1)
    width: int = 0
    height: int = 0
    sampled: bool = True
    capture_time: float = 0.0
    source: Source = NO_SOURCE
    frame_seq: int = 0
    replay: bool = False
    end: StreamEnd | None = None
    after: list[Source] = field(default_factory=list)  # control sources finished together with this entry
    enqueued: float = field(default_factory=time.monotonic)
    # --- filled by the schedule (sampled frames whose faces are found later, batched across streams)
    image: npt.NDArray[np.uint8] | None = None
    pending: bool = False
    frame_time: float = 0.0  # the decoded frame's pts_time
    index: int = 0  # sampling slot or frame index: picks the scheduled detection frames
    keyframe: bool = False  # the first sampled frame from a keyframe on
    cut: bool = False  # a scene cut before this frame
    # --- filled by the face finder
    dets: Detections | None = None
    crops: npt.NDArray[np.uint8] | None = None
    tracked: bool = False  # track ids assigned at detection time (detect-every-n)
    predicted: bool = False  # boxes predicted by the tracker, not detected
    refined: npt.NDArray[np.bool_] | None = None  # per face of a predicted frame: box found around the prediction
    error: tuple[str, BaseException] | None = None  # finding its faces failed: dead-lettered in FIFO order
    # --- filled by the finisher
    released: list[Source] | None = None  # sources taken from the stream's outstanding list

    @property
    def n_faces(self) -> int:
        return 0 if self.dets is None else len(self.dets)

    @property
    def pts_time(self) -> float:
        return 0.0 if self.pts is None else float(self.pts) * self.time_base[0] / self.time_base[1]


class WorkQueue:
    """FIFO of :class:`FrameWork` with the two counts batching looks at: frames whose faces are not found yet
    (``pending``) and faces found and waiting for inference (``faces``)."""

    def __init__(self) -> None:
        self._items: deque[FrameWork] = deque()
        self.pending = 0
        self.faces = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[FrameWork]:
        return iter(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def head(self) -> FrameWork:
        return self._items[0]

    def append(self, work: FrameWork) -> None:
        self._items.append(work)

    def defer(self, work: FrameWork, image: npt.NDArray[np.uint8], frame_time: float) -> None:
        """The frame waits for its faces (found later, batched across streams)."""
        work.image, work.pending, work.frame_time = image, True, frame_time
        self.pending += 1

    def found(self, work: FrameWork) -> npt.NDArray[np.uint8] | None:
        """The frame's faces are being set: it stops waiting; returns its image (dropped from the entry)."""
        image, work.image, work.pending = work.image, None, False
        self.pending -= 1
        return image

    def waiting(self) -> list[FrameWork]:
        """Frames whose faces are not found yet, in queue order."""
        return [w for w in self._items if w.pending]

    def popleft(self) -> FrameWork:
        return self._items.popleft()

    def finish_after(self, source: Source) -> bool:
        """Attach a control message's source to the newest entry (it finishes with it, keeping FIFO order); False
        when the queue is empty (the source is finished now)."""
        if not self._items:
            return False
        self._items[-1].after.append(source)
        return True

    def by_partition(self) -> dict[int, int]:
        """Queued frames per input partition (for backpressure)."""
        out: dict[int, int] = {}
        for w in self._items:
            out[w.stream.partition] = out.get(w.stream.partition, 0) + 1
        return out

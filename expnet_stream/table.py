"""Results as a table: frame events to an Arrow table (one row per face and frame), pandas, and Parquet files.

pyarrow and pandas are optional (``pip install 'expnet-stream[table]'``); they are imported on first use.

Rows and columns (:func:`table_schema`, ``TABLE_SCHEMA`` for the default emotion classes):

* one row per face of every :class:`~expnet_stream.events.schema.FrameEvent`, in the order of the events and, within
  a frame, of its ``faces``; a frame **without faces is one row whose face columns are null** (``face_index`` is
  null), so every processed frame is in the table and ``df.face_index.notna()`` selects the faces;
* frame columns: ``event_id``, ``stream_id``, ``frame_seq``, ``pts`` (time-base units, null when the decoder had
  none), ``pts_time`` (seconds), ``capture_time`` (unix s), ``width``, ``height``, ``model_id``, ``model_trained``
  (False: the coefficients are meaningless), ``basis_id``;
* face columns: ``face_index`` (position in the frame's ``faces``), ``track_id`` (-1: not tracked), the box
  ``x1, y1, x2, y2`` (frame pixels, float32), ``score`` (detector confidence, float32), ``predicted`` (True when
  the box was carried by the tracker between detections, False when detected on that frame), ``quality`` (the
  face's quality flags joined by ``,``; ``""`` when none);
* the 29 expression coefficients as float32 columns ``c00`` .. ``c28``, bit-identical to the event's packed float32
  (``df.filter(regex=r"^c\\d\\d$").to_numpy()`` gives the (N, 29) matrix);
* one float32 column ``emotion_<class>`` per emotion probability, for the classes of ``emotions`` (default: the eight
  emotions the shipped model publishes, contempt included since ``lfw-videos-ferplus-v2``), null when the face
  carries no probability for that class (an older seven-class model never publishes contempt: its column is null,
  unsupported rather than improbable); ``emotion``: the class with the highest probability (null without
  probabilities).

Events other than frame events (stream summaries, emotion aggregates) are not rows; the converters skip them.

In pandas (:func:`events_to_pandas`, ``Subscriber.to_pandas`` and ``pd.read_parquet`` convert alike) integer and
boolean columns that hold nulls (``pts``, ``face_index``, ``track_id``, ``predicted``) become float64 with NaN or
object; ``pd.read_parquet(path, dtype_backend="pyarrow")`` keeps their types.

>>> from expnet_stream.table import events_to_arrow, ParquetSink  # doctest: +SKIP
>>> table = events_to_arrow(events)  # doctest: +SKIP
>>> with ParquetSink("results.parquet") as sink:  # doctest: +SKIP
...     for ev in events:
...         sink.add(ev)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import OptionalDependencyError, TableError
from .events.schema import COEFF_DTYPE, NUM_COEFFS, FrameEvent
from .fileio import staged_path
from .models.emotion import EMOTIONS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "COEFF_COLUMNS",
    "DEFAULT_EMOTIONS",
    "INSTALL_HINT",
    "ParquetSink",
    "TableBuilder",
    "column_names",
    "emotion_columns",
    "events_to_arrow",
    "events_to_pandas",
    "table_schema",
]

INSTALL_HINT = "pip install 'expnet-stream[table]'"
DEFAULT_EMOTIONS: tuple[str, ...] = EMOTIONS
"""Emotion classes with a column by default: what the shipped model publishes (all eight, contempt included)."""
COEFF_COLUMNS: tuple[str, ...] = tuple(f"c{i:02d}" for i in range(NUM_COEFFS))
FRAME_COLUMNS = (
    "event_id",
    "stream_id",
    "frame_seq",
    "pts",
    "pts_time",
    "capture_time",
    "width",
    "height",
    "model_id",
    "model_trained",
    "basis_id",
)
FACE_COLUMNS = ("face_index", "track_id", "x1", "y1", "x2", "y2", "score", "predicted", "quality")
DEFAULT_ROW_GROUP_ROWS = 50_000


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:
        raise OptionalDependencyError(f"results as a table need pyarrow: {INSTALL_HINT}") from exc
    return pyarrow


def _parquet() -> Any:
    _pyarrow()
    import pyarrow.parquet

    return pyarrow.parquet


def emotion_columns(classes: Sequence[str]) -> tuple[str, ...]:
    """The emotion columns for a model that publishes ``classes``: :data:`DEFAULT_EMOTIONS` (the stable default
    schema) unless the model publishes a class outside them; then the union, in :data:`EMOTIONS` order, then the
    rest."""
    if set(classes) <= set(DEFAULT_EMOTIONS):
        return DEFAULT_EMOTIONS
    union = {*DEFAULT_EMOTIONS, *classes}
    known = tuple(k for k in EMOTIONS if k in union)
    return known + tuple(k for k in classes if k not in known)


def column_names(emotions: Sequence[str] = DEFAULT_EMOTIONS) -> list[str]:
    """The table's column names in order (no pyarrow needed)."""
    return [
        *FRAME_COLUMNS,
        *FACE_COLUMNS,
        *COEFF_COLUMNS,
        *(f"emotion_{k}" for k in emotions),
        "emotion",
    ]


def table_schema(emotions: Sequence[str] = DEFAULT_EMOTIONS) -> pa.Schema:
    """The Arrow schema of the table, with one ``emotion_<class>`` column per class of ``emotions``."""
    pa = _pyarrow()
    if len(set(emotions)) != len(emotions):
        raise ValueError(f"emotion classes repeat: {list(emotions)}")
    f32 = pa.float32()
    fields = [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("stream_id", pa.string(), nullable=False),
        pa.field("frame_seq", pa.int64(), nullable=False),
        pa.field("pts", pa.int64()),
        pa.field("pts_time", pa.float64(), nullable=False),
        pa.field("capture_time", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_trained", pa.bool_(), nullable=False),
        pa.field("basis_id", pa.string(), nullable=False),
        pa.field("face_index", pa.int32()),
        pa.field("track_id", pa.int32()),
        *(pa.field(n, f32) for n in ("x1", "y1", "x2", "y2", "score")),
        pa.field("predicted", pa.bool_()),
        pa.field("quality", pa.string()),
        *(pa.field(n, f32) for n in COEFF_COLUMNS),
        *(pa.field(f"emotion_{k}", f32) for k in emotions),
        pa.field("emotion", pa.string()),
    ]
    return pa.schema(fields, metadata={b"expnet_stream.table": b"1", b"row": b"one per face and frame"})


def __getattr__(name: str) -> Any:
    """``TABLE_SCHEMA``: the schema for :data:`DEFAULT_EMOTIONS`, built on first access (pyarrow is optional)."""
    if name == "TABLE_SCHEMA":
        schema = table_schema()
        globals()["TABLE_SCHEMA"] = schema
        return schema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TableBuilder:
    """Collects frame events as rows; :meth:`to_arrow` makes the table, :meth:`clear` starts over.

    ``emotions`` fixes the emotion columns. A face with probabilities for a class that has no column raises
    :class:`~expnet_stream.errors.TableError` (pass that model's classes, e.g. ``emotions=EMOTIONS``) rather than
    drop them silently.
    """

    def __init__(self, emotions: Sequence[str] = DEFAULT_EMOTIONS) -> None:
        self.emotions = tuple(emotions)
        self.schema = table_schema(self.emotions)
        self._emotion_set = frozenset(self.emotions)
        self.frames = 0
        self.faces = 0
        self.skipped = 0
        self.clear()

    def clear(self) -> None:
        """Forget the rows collected so far (the counters go on)."""
        self._cols: dict[str, list[Any]] = {n: [] for n in (*FRAME_COLUMNS, *FACE_COLUMNS, "emotion")}
        self._coeffs: list[bytes | None] = []
        self._probs: list[dict[str, float] | None] = []

    @property
    def rows(self) -> int:
        """Rows collected since the last :meth:`clear`."""
        return len(self._coeffs)

    def add(self, event: object) -> int:
        """Add a frame event's rows (one per face, or one null-face row); other events are skipped. Returns rows."""
        if not isinstance(event, FrameEvent):
            self.skipped += 1
            return 0
        frame = (
            event.event_id,
            event.stream_id,
            event.frame_seq,
            event.pts,
            event.pts_time,
            event.capture_time,
            event.width,
            event.height,
            event.model_id,
            event.model_trained,
            event.basis_id,
        )
        faces = event.faces
        unknown = {k for f in faces for k in f.emotions or ()} - self._emotion_set
        if unknown:  # checked before any row is added: the builder stays consistent
            raise TableError(
                f"{event.event_id}: emotion classes {sorted(unknown)} have no column (columns: "
                f"{list(self.emotions)}); pass emotions= with this model's classes"
            )
        self.frames += 1
        c = self._cols
        for i in range(max(1, len(faces))):
            for name, value in zip(FRAME_COLUMNS, frame, strict=True):
                c[name].append(value)
            if not faces:
                for name in FACE_COLUMNS:
                    c[name].append(None)
                c["emotion"].append(None)
                self._coeffs.append(None)
                self._probs.append(None)
                continue
            f = faces[i]
            self.faces += 1
            c["face_index"].append(i)
            c["track_id"].append(f.track_id)
            for name, value in zip(("x1", "y1", "x2", "y2"), f.box, strict=True):
                c[name].append(value)
            c["score"].append(f.score)
            c["predicted"].append("predicted" in f.quality)
            c["quality"].append(",".join(f.quality))
            probs = f.emotions or None
            c["emotion"].append(None if probs is None else max(probs, key=probs.__getitem__))
            self._coeffs.append(f.coeffs)
            self._probs.append(probs)
        return max(1, len(faces))

    def extend(self, events: Iterable[object]) -> int:
        """:meth:`add` every event; returns the rows added."""
        return sum(self.add(ev) for ev in events)

    def to_arrow(self) -> pa.Table:
        """The rows collected so far as a table of :attr:`schema` (empty, with every column, when none)."""
        pa = _pyarrow()
        n = self.rows
        arrays: dict[str, Any] = {}
        for name in (*FRAME_COLUMNS, *FACE_COLUMNS):
            arrays[name] = pa.array(self._cols[name], type=self.schema.field(name).type)
        has = np.fromiter((b is not None for b in self._coeffs), dtype=bool, count=n)
        null = ~has
        coeffs = np.zeros((n, NUM_COEFFS), np.float32)
        if has.any():
            packed = b"".join(b for b in self._coeffs if b is not None)
            coeffs[has] = np.frombuffer(packed, dtype=COEFF_DTYPE).reshape(-1, NUM_COEFFS)
        for j, name in enumerate(COEFF_COLUMNS):
            arrays[name] = pa.array(np.ascontiguousarray(coeffs[:, j]), type=pa.float32(), mask=null)
        for k in self.emotions:
            values = np.zeros(n, np.float32)
            missing = np.ones(n, bool)
            for r, probs in enumerate(self._probs):
                if probs is not None and k in probs:
                    values[r] = probs[k]
                    missing[r] = False
            arrays[f"emotion_{k}"] = pa.array(values, type=pa.float32(), mask=missing)
        arrays["emotion"] = pa.array(self._cols["emotion"], type=pa.string())
        return pa.Table.from_arrays([arrays[n] for n in self.schema.names], schema=self.schema)


def events_to_arrow(events: Iterable[object], *, emotions: Sequence[str] = DEFAULT_EMOTIONS) -> pa.Table:
    """Frame events (other events are skipped) as an Arrow table, one row per face and frame (module docstring)."""
    builder = TableBuilder(emotions)
    builder.extend(events)
    return builder.to_arrow()


def events_to_pandas(events: Iterable[object], *, emotions: Sequence[str] = DEFAULT_EMOTIONS) -> pd.DataFrame:
    """:func:`events_to_arrow` as a pandas DataFrame (nullable columns keep their nulls as NaN / None / <NA>)."""
    try:  # before reading any event: a subscriber's events would be consumed for nothing
        import pandas  # noqa: F401
    except ImportError as exc:
        raise OptionalDependencyError(f"results as a DataFrame need pandas: {INSTALL_HINT}") from exc
    return events_to_arrow(events, emotions=emotions).to_pandas()


class ParquetSink:
    """Writes frame events to a Parquet file incrementally, a row group every ``row_group_rows`` rows.

    The file is written beside ``path`` (:func:`~expnet_stream.fileio.staged_path`) and renamed to it on
    :meth:`close` (removed when closing fails), so ``path`` is always a complete
    file; with no rows at all it is an empty file that still has every column. Other events are counted in
    :attr:`skipped`.

    >>> with ParquetSink("x.parquet", row_group_rows=10_000) as sink:  # doctest: +SKIP
    ...     for ev in events:
    ...         sink.add(ev)
    >>> sink.rows, sink.frames, sink.faces  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        emotions: Sequence[str] = DEFAULT_EMOTIONS,
        compression: str = "zstd",
    ) -> None:
        if row_group_rows < 1:
            raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
        self._pq = _parquet()
        self.path = Path(path)
        self.row_group_rows = row_group_rows
        self._builder = TableBuilder(emotions)
        self._staged = contextlib.ExitStack()
        part = self._staged.enter_context(staged_path(self.path, suffix=".part.parquet"))
        try:
            self._writer: Any = self._pq.ParquetWriter(str(part), self._builder.schema, compression=compression)
        except BaseException:
            self._staged.__exit__(*sys.exc_info())  # the temp file goes
            raise
        self.rows = 0
        self.closed = False

    @property
    def schema(self) -> pa.Schema:
        return self._builder.schema

    @property
    def frames(self) -> int:
        """Frame events added."""
        return self._builder.frames

    @property
    def faces(self) -> int:
        """Faces added (rows with a face)."""
        return self._builder.faces

    @property
    def skipped(self) -> int:
        """Events added that are not frame events (not written)."""
        return self._builder.skipped

    def add(self, event: object) -> int:
        """Add one event's rows (frame events only); writes a row group when enough rows are buffered."""
        if self.closed:
            raise ValueError(f"{self.path}: sink is closed")
        added = self._builder.add(event)
        self.rows += added
        if self._builder.rows >= self.row_group_rows:
            self.flush()
        return added

    def flush(self) -> None:
        """Write the buffered rows as a row group (nothing when none are buffered)."""
        if self._builder.rows:
            self._writer.write_table(self._builder.to_arrow(), row_group_size=self.row_group_rows)
            self._builder.clear()

    def close(self) -> None:
        """Write what is buffered, finish the file and move it to :attr:`path`. Idempotent."""
        if self.closed:
            return
        self.closed = True
        with self._staged:  # renamed to path when this block ends normally, removed when it raises
            try:
                self.flush()
            finally:
                self._writer.close()

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""Results as a table: real frame events (the shipped model on a real H.264 clip) to Arrow, pandas and Parquet."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from expnet_stream.cli.main import main
from expnet_stream.errors import ExpNetError, OptionalDependencyError, TableError
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.schema import Face, FrameEvent, StreamSummary
from expnet_stream.models.emotion import EMOTIONS, FER_CLASSES

pa = pytest.importorskip("pyarrow", reason="results as a table need pyarrow (the `table` extra)")
pd = pytest.importorskip("pandas", reason="results as a table need pandas (the `table` extra)")
pq = pytest.importorskip("pyarrow.parquet")

from expnet_stream.table import (  # noqa: E402
    COEFF_COLUMNS,
    ParquetSink,
    column_names,
    emotion_columns,
    events_to_arrow,
    events_to_pandas,
    table_schema,
)

pytestmark = pytest.mark.unit

FACE_COLUMNS = ["face_index", "track_id", "x1", "y1", "x2", "y2", "score", "predicted", "quality"]


@pytest.fixture(scope="module")
def run_events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[object]]:
    """The real pipeline (shipped model with its emotion output, default detector) on a 20-frame H.264 clip whose
    first 5 frames are blank: every event it emits, in order."""
    from expnet_stream.config.settings import load_settings
    from expnet_stream.worker.local import run_local
    from expnet_stream.worker.runtime import build_detector, build_emotion_head, build_engine
    from tests.conftest import make_face_video

    d = tmp_path_factory.mktemp("table")
    clip = d / "clip.mp4"
    make_face_video(clip, n_frames=20, blank_frames=5)
    config = d / "w.yaml"
    config.write_text("model:\n  threads: 1\n")
    settings = load_settings(str(config), {})
    engine = build_engine(settings)
    events: list[object] = []
    run_local(
        [(str(clip), clip.stem)],
        settings,
        build_detector(settings),
        engine,
        events.append,
        emotion_head=build_emotion_head(settings, engine),
    )
    return clip, config, events


def _frames(events: list[object]) -> list[FrameEvent]:
    return [e for e in events if isinstance(e, FrameEvent)]


def test_one_row_per_face_and_a_null_row_per_faceless_frame(run_events: tuple[Path, Path, list[object]]) -> None:
    _, _, events = run_events
    frames = _frames(events)
    assert len(frames) == 20 and not any(f.faces for f in frames[:5]), "the blank frames have no face"
    n_faces = sum(len(f.faces) for f in frames)
    assert n_faces >= 13, "the astronaut is found on most face frames"
    assert any(isinstance(e, StreamSummary) for e in events)
    table = events_to_arrow(events)  # summaries and aggregates are skipped, not rows
    assert table.schema == table_schema() and table.column_names == column_names()
    faceless = sum(1 for f in frames if not f.faces)
    assert table.num_rows == n_faces + faceless

    rows = table.to_pylist()
    r = 0
    for ev in frames:
        for i, face in enumerate(ev.faces or [None]):
            row = rows[r]
            r += 1
            assert (row["event_id"], row["stream_id"], row["frame_seq"], row["pts"]) == (
                ev.event_id,
                ev.stream_id,
                ev.frame_seq,
                ev.pts,
            )
            assert (row["pts_time"], row["model_id"], row["model_trained"]) == (
                ev.pts_time,
                ev.model_id,
                ev.model_trained,
            )
            if face is None:
                assert all(row[c] is None for c in [*FACE_COLUMNS, *COEFF_COLUMNS, "emotion"])
                assert all(row[f"emotion_{k}"] is None for k in EMOTIONS)
                continue
            assert row["face_index"] == i and row["track_id"] == face.track_id
            assert [row[c] for c in ("x1", "y1", "x2", "y2")] == np.float32(face.box).tolist()
            assert row["score"] == np.float32(face.score)
            assert row["predicted"] == ("predicted" in face.quality)
            assert row["quality"] == ",".join(face.quality)
            assert face.emotions is not None and set(face.emotions) == set(EMOTIONS)  # the shipped model: all 8
            for k, p in face.emotions.items():
                assert row[f"emotion_{k}"] == np.float32(p)
            assert row["emotion"] == max(face.emotions, key=face.emotions.__getitem__)
    assert r == table.num_rows
    contempt = [
        v
        for v, f in zip(table.column("emotion_contempt").to_pylist(), rows, strict=True)
        if f["face_index"] is not None
    ]
    assert contempt and all(v is not None for v in contempt), "contempt is published: a filled column"

    # the 29 coefficients are the events' float32, bit for bit
    coeffs = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in COEFF_COLUMNS], axis=1)
    has_face = table.column("face_index").is_valid().to_numpy(zero_copy_only=False)
    expected = np.stack([f.coefficients for ev in frames for f in ev.faces])
    assert coeffs.dtype == np.float32
    assert np.array_equal(coeffs[has_face].view(np.uint32), expected.view(np.uint32))


def test_column_types_and_the_empty_table(run_events: tuple[Path, Path, list[object]]) -> None:
    schema = table_schema()
    assert schema.field("frame_seq").type == pa.int64() and schema.field("pts_time").type == pa.float64()
    assert schema.field("track_id").type == pa.int32() and schema.field("predicted").type == pa.bool_()
    for name in ("x1", "y1", "x2", "y2", "score", *COEFF_COLUMNS, *(f"emotion_{k}" for k in EMOTIONS)):
        assert schema.field(name).type == pa.float32(), name
    assert schema.field("emotion").type == pa.string()
    empty = events_to_arrow([])
    assert empty.num_rows == 0 and empty.schema == schema
    df = events_to_pandas([])
    assert list(df.columns) == column_names() and len(df) == 0
    # pandas: one DataFrame, coefficients as a (N, 29) float32 matrix
    _, _, events = run_events
    df = events_to_pandas(events)
    assert df[list(COEFF_COLUMNS)].to_numpy().dtype == np.float32
    assert df.face_index.isna().sum() == 5 and df.emotion.dropna().isin(EMOTIONS).all()


def test_parquet_sink_writes_row_groups_and_pandas_reads_them_back(
    run_events: tuple[Path, Path, list[object]], tmp_path: Path
) -> None:
    _, _, events = run_events
    path = tmp_path / "x.parquet"
    with ParquetSink(path, row_group_rows=4) as sink:
        for ev in events:
            sink.add(ev)
        assert not path.exists(), "the file appears complete, on close"
    expected = events_to_arrow(events)
    assert sink.rows == expected.num_rows and sink.frames == 20
    assert sink.skipped == sum(isinstance(e, StreamSummary | EmotionAggregate) for e in events)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == expected.num_rows and meta.num_row_groups >= expected.num_rows // 4
    assert pq.read_table(path).schema.equals(expected.schema)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected.to_pandas())

    # nothing came: an empty file that still has every column
    with ParquetSink(tmp_path / "empty.parquet"):
        pass
    df = pd.read_parquet(tmp_path / "empty.parquet")
    assert len(df) == 0 and list(df.columns) == column_names()

    # an error in the middle: what was added is still a complete file
    with pytest.raises(RuntimeError), ParquetSink(tmp_path / "cut.parquet", row_group_rows=3) as sink:
        for ev in events[:7]:
            sink.add(ev)
        raise RuntimeError("stopped")
    assert len(pd.read_parquet(tmp_path / "cut.parquet")) == events_to_arrow(events[:7]).num_rows


def test_emotion_classes_without_a_column_are_an_error_not_dropped(
    run_events: tuple[Path, Path, list[object]],
) -> None:
    _, _, events = run_events
    ev = next(e for e in _frames(events) if e.faces)
    face = ev.faces[0]
    assert face.emotions is not None
    probs = {**{k: v * 0.5 for k, v in face.emotions.items()}, "awe": 0.5}  # a class outside the product's eight
    other = ev.model_copy(update={"faces": [Face(**{**face.model_dump(), "emotions": probs})]})
    with pytest.raises(TableError, match="awe"):
        events_to_arrow([other])
    cols = emotion_columns(tuple(probs))
    assert cols == (*EMOTIONS, "awe")
    table = events_to_arrow([ev, other], emotions=cols)
    assert table.column("emotion_awe").to_pylist() == [None, 0.5]
    assert table.column("emotion").to_pylist()[1] == "awe"
    # the default schema stays stable: a seven-class model from before FER+ gets the same eight columns
    assert emotion_columns(FER_CLASSES) == EMOTIONS == emotion_columns(())


def test_missing_pyarrow_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what Python does for a module that is not installed
    with pytest.raises(OptionalDependencyError, match=r"pip install 'expnet-stream\[table\]'") as info:
        events_to_arrow([])
    assert isinstance(info.value, ExpNetError)


def test_cli_run_out_parquet(run_events: tuple[Path, Path, list[object]], tmp_path: Path) -> None:
    clip, config, events = run_events
    out = tmp_path / "x.parquet"
    assert main(["run", str(clip), "--config", str(config), "--out", str(out), "--json"]) == 0
    df = pd.read_parquet(out)
    frames = _frames(events)
    assert len(df) == sum(max(1, len(f.faces)) for f in frames)
    assert df.face_index.notna().sum() == sum(len(f.faces) for f in frames)
    assert df.groupby("frame_seq").size().index.tolist() == list(range(20))
    # the same pipeline, the same rows (only the wall-clock capture time differs)
    expected = events_to_pandas(events)
    pd.testing.assert_frame_equal(df.drop(columns="capture_time"), expected.drop(columns="capture_time"))

"""expnet_stream.fileio: atomic writes are all-or-nothing, leave no temp files and give the files mode 0644."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expnet_stream.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    bytes_sha256,
    file_sha256,
    staged_path,
)
from tests.conftest import file_mode

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("strict_umask")]


def test_atomic_writes_are_0644_whatever_the_umask_and_leave_only_the_file(tmp_path: Path) -> None:
    a = atomic_write_bytes(tmp_path / "a.bin", memoryview(b"\x00\x01\x02"))
    b = atomic_write_text(tmp_path / "b.txt", "héllo\n")
    with atomic_writer(tmp_path / "c.npz") as fh:
        np.savez(fh, x=np.arange(3))
    assert a.read_bytes() == b"\x00\x01\x02" and b.read_text(encoding="utf-8") == "héllo\n"
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["x"], np.arange(3))
    assert {p.name: file_mode(p) for p in tmp_path.iterdir()} == {"a.bin": 0o644, "b.txt": 0o644, "c.npz": 0o644}
    assert oct(file_mode(atomic_write_bytes(tmp_path / "key", b"k", mode=0o600))) == "0o600"


class _Boom(Exception):
    pass


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.plan"
    target.write_bytes(b"old plan")
    with pytest.raises(_Boom), atomic_writer(target) as fh:
        fh.write(b"half a new pl")
        raise _Boom
    assert target.read_bytes() == b"old plan"
    assert [p.name for p in tmp_path.iterdir()] == ["model.plan"]


def test_a_buffer_that_cannot_be_written_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "timing.cache"
    target.write_bytes(b"old cache")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old cache" and [p.name for p in tmp_path.iterdir()] == ["timing.cache"]


def test_a_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "child").write_bytes(b"x")  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


def test_staged_path_installs_only_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"v1")
    with pytest.raises(_Boom), staged_path(target, suffix=".tmp.onnx") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.onnx") and tmp.name.startswith(".model.onnx.")
        tmp.write_bytes(b"v2 that failed its check")
        raise _Boom
    assert target.read_bytes() == b"v1" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    with staged_path(target) as tmp:
        tmp.write_bytes(b"v2")
        assert target.read_bytes() == b"v1"  # nothing visible before the block ends
    assert target.read_bytes() == b"v2" and file_mode(target) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_sha256_helpers_agree(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    path = atomic_write_bytes(tmp_path / "f", data)
    assert file_sha256(path, chunk_bytes=4096) == bytes_sha256(data) == bytes_sha256(memoryview(data))
    assert bytes_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

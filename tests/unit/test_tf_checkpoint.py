"""The dependency-free TF V2 checkpoint (tensor bundle) reader and writer, and its SSTable/crc32c/snappy codecs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from expnet_stream.errors import ModelError
from expnet_stream.models import sstable
from expnet_stream.models import tf_checkpoint as tfc

pytestmark = pytest.mark.unit


def test_crc32c_known_values_and_lanes() -> None:
    assert sstable.crc32c(b"") == 0
    assert sstable.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert sstable.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vectors
    assert sstable.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert sstable.crc32c(bytes(range(32))) == 0x46DD794E
    rng = np.random.default_rng(0)
    for n in (1000, 4097, 100_003, 1_000_000):  # lane-parallel path against the byte loop
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert sstable.crc32c(data) == sstable._raw_crc_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF, n
        assert sstable.crc32c(data[n // 2 :], sstable.crc32c(data[: n // 2])) == sstable.crc32c(data)
    assert sstable.unmask_crc(sstable.mask_crc(0x12345678)) == 0x12345678


def test_round_trip_dtypes_and_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        "scope/conv1/weights": rng.normal(size=(7, 7, 3, 64)).astype(np.float32),
        "scope/bn_conv1/mean": rng.normal(size=64).astype(np.float64),
        "global_step": np.asarray(123456789012, np.int64),
        "counts": np.arange(-5, 5, dtype=np.int32).reshape(2, 5),
        "empty": np.zeros((0, 3), np.float32),
        "negative": np.asarray([-1, -(2**40)], np.int64),
    }
    prefix = tfc.write_checkpoint(tmp_path / "m.ckpt", tensors)
    assert (tmp_path / "m.ckpt.index").is_file() and (tmp_path / "m.ckpt.data-00000-of-00001").is_file()
    info = tfc.list_checkpoint(prefix)
    assert sorted(info) == sorted(tensors)
    assert info["counts"].dtype_name == "int32" and info["counts"].shape == (2, 5)
    for path in (prefix, tmp_path / "m.ckpt.index", tmp_path / "m.ckpt.data-00000-of-00001"):
        got = tfc.read_checkpoint(path)
        assert sorted(got) == sorted(tensors)
        for key, value in tensors.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            np.testing.assert_array_equal(got[key], value)
    assert list(tfc.read_checkpoint(prefix, ["counts"])) == ["counts"]


def test_many_keys_span_several_blocks(tmp_path: Path) -> None:
    # > 4 KiB of index entries: several data blocks, shared key prefixes and restart points.
    tensors = {f"exprCNN/res4b{i}_branch2{c}/weights": np.full((1,), i, np.float32) for i in range(200) for c in "abc"}
    tfc.write_checkpoint(tmp_path / "m.ckpt", tensors)
    index = (tmp_path / "m.ckpt.index").read_bytes()
    assert len(index) > 3 * sstable.BLOCK_SIZE  # several data blocks
    got = tfc.read_checkpoint(tmp_path / "m.ckpt")
    assert got.keys() == tensors.keys()
    assert all(np.array_equal(got[k], v) for k, v in tensors.items())


def test_footer_magic_and_header(tmp_path: Path) -> None:
    tfc.write_checkpoint(tmp_path / "m.ckpt", {"a": np.ones(2, np.float32)})
    index = (tmp_path / "m.ckpt.index").read_bytes()
    lo, hi = struct.unpack("<II", index[-8:])
    assert (hi << 32 | lo) == 0xDB4775248B80FB57
    entries = list(sstable.read_table(tmp_path / "m.ckpt.index"))
    assert [k for k, _ in entries] == [b"", b"a"]  # the header entry sorts first
    assert dict(sstable.proto_fields(entries[0][1]))[1] == 1  # num_shards


def test_snappy_blocks_are_read(tmp_path: Path) -> None:
    tensors = {f"v{i:03d}": np.full((3,), i, np.float32) for i in range(200)}
    tfc.write_checkpoint(tmp_path / "s.ckpt", tensors, _compression=sstable.SNAPPY_COMPRESSION)
    got = tfc.read_checkpoint(tmp_path / "s.ckpt")
    assert all(np.array_equal(got[k], v) for k, v in tensors.items())


def test_snappy_copies() -> None:
    # "abcd" literal, then a 1-byte-offset copy of 8 (overlapping: repeats "abcd"), then a 2-byte-offset copy of 2.
    stream = bytes([14, (3 << 2) | 0]) + b"abcd" + bytes([((8 - 4) << 2) | 1, 4]) + bytes([(1 << 2) | 2, 12, 0])
    assert sstable.snappy_decompress(stream) == b"abcdabcdabcdab"
    with pytest.raises(ModelError, match="snappy"):
        sstable.snappy_decompress(bytes([9, 0]) + b"a" + bytes([((8 - 4) << 2) | 1, 5]))


def test_corruption_is_detected(tmp_path: Path) -> None:
    tfc.write_checkpoint(tmp_path / "m.ckpt", {"a": np.arange(100, dtype=np.float32)})
    data = tmp_path / "m.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[17] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="crc32c mismatch"):
        tfc.read_checkpoint(tmp_path / "m.ckpt")
    assert tfc.read_checkpoint(tmp_path / "m.ckpt", verify=False)["a"][4] != 4.0  # the flipped byte, unchecked
    index = tmp_path / "m.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[3] ^= 0x01
    index.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="checksum mismatch"):
        tfc.read_checkpoint(tmp_path / "m.ckpt")
    index.write_bytes(b"\0" * 100)
    with pytest.raises(ModelError, match="bad magic"):
        tfc.read_checkpoint(tmp_path / "m.ckpt")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no TF checkpoint"):
        tfc.read_checkpoint(tmp_path / "nothing.ckpt")
    (tmp_path / "v1.ckpt").write_bytes(b"\0" * 10)
    with pytest.raises(ModelError, match="V1"):
        tfc.read_checkpoint(tmp_path / "v1.ckpt")
    tfc.write_checkpoint(tmp_path / "m.ckpt", {"a": np.ones(1, np.float32)})
    with pytest.raises(ModelError, match="not in the checkpoint"):
        tfc.read_checkpoint(tmp_path / "m.ckpt", ["b"])
    with pytest.raises(ModelError, match="cannot write variable"):
        tfc.write_checkpoint(tmp_path / "c.ckpt", {"c": np.ones(1, np.complex64)})
    (tmp_path / "m.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(ModelError, match="cannot read TF checkpoint data"):
        tfc.read_checkpoint(tmp_path / "m.ckpt")

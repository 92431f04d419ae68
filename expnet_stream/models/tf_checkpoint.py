"""A small, dependency-free reader (and writer) of TensorFlow V2 checkpoints: the "tensor bundle" format.

No TensorFlow and no protobuf package: the formats are small and documented in the TensorFlow sources, which this
module follows (``tensorflow/core/util/tensor_bundle/tensor_bundle.cc``, ``tensorflow/core/lib/io/format.{h,cc}``,
``table_builder.cc``, ``block_builder.cc``, ``tensorflow/core/protobuf/tensor_bundle.proto``):

* ``<prefix>.index`` is a LevelDB-format SSTable (:mod:`.sstable`: prefix-compressed blocks with restart arrays,
  5-byte block trailers with a compression byte and masked crc32c, an index block, a 48-byte footer with magic
  ``0xdb4775248b80fb57``). TensorFlow has written it uncompressed since 1.2 (``BundleWriter::Finish``:
  ``kNoCompression``); older files may hold snappy blocks, which are decompressed too.
* Values are serialized protobufs: the empty key ``""`` holds a ``BundleHeaderProto`` (1 num_shards, 2 endianness,
  3 version: VersionDef 1 producer, 2 min_consumer, 3 bad_consumers); every other key a ``BundleEntryProto``
  (1 dtype, 2 shape: TensorShapeProto 2 dim {1 size, 2 name} 3 unknown_rank, 3 shard_id, 4 offset, 5 size,
  6 crc32c fixed32 masked, 7 slices).
* ``<prefix>.data-<shard:05d>-of-<num_shards:05d>`` holds the raw tensor bytes (little-endian unless the header says
  BIG), each followed by alignment padding; ``crc32c`` covers exactly ``size`` bytes.

Supported dtypes: float32/64, float16, int8/16/32/64, uint8, bool. Partitioned (sliced) variables, strings and
variants are not. V1 checkpoints (a single SSTable file of ``SavedSlice`` records) are recognised and refused.

>>> import tempfile, os
>>> prefix = os.path.join(tempfile.mkdtemp(), "model.ckpt")
>>> _ = write_checkpoint(prefix, {"b": np.arange(3, dtype=np.int64), "a/w": np.ones((2, 2), np.float32)})
>>> {k: (v.dtype.name, v.shape) for k, v in read_checkpoint(prefix).items()}
{'a/w': ('float32', (2, 2)), 'b': ('int64', (3,))}
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from .sstable import (
    NO_COMPRESSION,
    crc32c,
    encode_table,
    mask_crc,
    proto_fields,
    put_varint,
    read_table,
    read_varint,
    signed64,
    unmask_crc,
)

logger = logging.getLogger(__name__)

__all__ = [
    "TensorInfo",
    "crc32c",
    "list_checkpoint",
    "mask_crc",
    "read_checkpoint",
    "unmask_crc",
    "write_checkpoint",
]

BUNDLE_VERSION = 1  # kTensorBundleVersion: the consumer version this reader implements

# tensorflow/core/framework/types.proto DataType -> numpy dtype (little-endian).
_DTYPES: dict[int, np.dtype[np.generic]] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}
_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 9: "int64"}
_DTYPE_NAMES |= {10: "bool", 19: "float16", 21: "variant"}
_TO_TF = {dt.newbyteorder("<"): code for code, dt in _DTYPES.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Bundle
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One ``BundleEntryProto``: ``dtype`` is the TF DataType code, ``crc32c`` the masked checksum of the bytes."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES.get(self.dtype, f"tf-dtype-{self.dtype}")


def _parse_shape(msg: bytes) -> tuple[int, ...]:
    dims: list[int] = []
    for number, value in proto_fields(msg):
        if number == 2 and isinstance(value, bytes):
            size = 0
            for n, v in proto_fields(value):
                if n == 1 and isinstance(v, int):
                    size = signed64(v)
            dims.append(size)
        elif number == 3 and value:
            raise ModelError("TF checkpoint entry has an unknown-rank shape")
    if any(d < 0 for d in dims):
        raise ModelError(f"TF checkpoint entry has a partially unknown shape {dims}")
    return tuple(dims)


def _parse_entry(value: bytes) -> TensorInfo:
    ints: dict[int, int] = {}
    shape, sliced = b"", False
    for number, v in proto_fields(value):
        if number == 7:
            sliced = True
        elif number == 2 and isinstance(v, bytes):
            shape = v
        elif isinstance(v, int):
            ints[number] = v
    return TensorInfo(
        dtype=ints.get(1, 0),
        shape=_parse_shape(shape),
        shard_id=ints.get(3, 0),
        offset=signed64(ints.get(4, 0)),
        size=signed64(ints.get(5, 0)),
        crc32c=ints.get(6, 0),
        sliced=sliced,
    )


def _normalise_prefix(prefix: str | os.PathLike[str]) -> Path:
    p = Path(prefix)
    name = p.name
    if name.endswith(".index"):
        return p.with_name(name[: -len(".index")])
    if ".data-" in name and "-of-" in name:
        return p.with_name(name[: name.index(".data-")])
    return p


def _index_path(prefix: Path) -> Path:
    index = prefix.with_name(prefix.name + ".index")
    if index.is_file():
        return index
    if prefix.is_file():
        raise ModelError(
            f"{prefix} looks like a TF V1 checkpoint (one file, no .index); only V2 tensor bundles are supported: "
            "re-save it with TensorFlow (tf.train.Saver(write_version=tf.train.SaverDef.V2))"
        )
    raise ModelError(f"no TF checkpoint at {prefix} (missing {index.name})")


def _read_index(prefix: Path) -> tuple[int, bool, dict[str, TensorInfo]]:
    """``(num_shards, big_endian, entries)`` from ``<prefix>.index``."""
    path = _index_path(prefix)
    num_shards, big_endian, header_seen = 1, False, False
    entries: dict[str, TensorInfo] = {}
    for raw_key, value in read_table(path):
        if raw_key == b"":
            header_seen = True
            for number, v in proto_fields(value):
                if number == 1 and isinstance(v, int):
                    num_shards = v
                elif number == 2 and isinstance(v, int):
                    big_endian = v == 1
                elif number == 3 and isinstance(v, bytes):
                    _check_version(v, path)
            continue
        key = raw_key.decode("utf-8", errors="replace")
        entries[key] = _parse_entry(value)
    if not header_seen:
        raise ModelError(f"{path} has no bundle header entry; not a TF V2 checkpoint index")
    return num_shards, big_endian, entries


def _check_version(msg: bytes, path: Path) -> None:
    for number, v in proto_fields(msg):
        if number == 2 and isinstance(v, int) and v > BUNDLE_VERSION:
            raise ModelError(f"{path} needs a tensor-bundle reader of version >= {v}; this one is {BUNDLE_VERSION}")
        if number == 3:  # repeated int32 bad_consumers, packed (bytes) or not
            bad = [v] if isinstance(v, int) else _packed_varints(v)
            if BUNDLE_VERSION in bad:
                raise ModelError(f"{path} declares tensor-bundle version {BUNDLE_VERSION} a bad consumer")


def _packed_varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = read_varint(buf, pos)
        out.append(value)
    return out


def list_checkpoint(prefix: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Variable name -> :class:`TensorInfo` (dtype, shape, location) without reading tensor data."""
    return _read_index(_normalise_prefix(prefix))[2]


def read_checkpoint(
    prefix: str | os.PathLike[str], keys: list[str] | None = None, *, verify: bool = True
) -> dict[str, npt.NDArray[np.generic]]:
    """Read tensors of a TF V2 checkpoint (``prefix`` as given to ``Saver.restore``, or its ``.index`` path).

    ``keys=None`` reads every variable, skipping (with a warning) ones of unsupported dtype; named ``keys`` must all
    exist and be supported. ``verify`` checks each tensor's crc32c (on by default; blocks of the index are always
    checked). Raises :class:`~expnet_stream.errors.ModelError` on any format problem.
    """
    prefix = _normalise_prefix(prefix)
    num_shards, big_endian, entries = _read_index(prefix)
    if keys is None:
        wanted = sorted(entries)
    else:
        missing = [k for k in keys if k not in entries]
        if missing:
            raise ModelError(f"{prefix}: variables not in the checkpoint: {missing[:10]}")
        wanted = list(keys)
    out: dict[str, npt.NDArray[np.generic]] = {}
    files: dict[int, bytes] = {}
    for key in wanted:
        info = entries[key]
        if info.sliced:
            raise ModelError(f"{prefix}: variable {key!r} is partitioned (sliced); not supported")
        dtype = _DTYPES.get(info.dtype)
        if dtype is None:
            if keys is None:
                logger.warning("skipping TF variable of unsupported dtype key=%s dtype=%s", key, info.dtype_name)
                continue
            raise ModelError(f"{prefix}: variable {key!r} has unsupported dtype {info.dtype_name}")
        count = int(np.prod(info.shape, dtype=np.int64))
        if info.size != count * dtype.itemsize:
            raise ModelError(f"{prefix}: variable {key!r} holds {info.size} bytes, shape {info.shape} needs more/less")
        if info.shard_id not in files:
            data_path = prefix.with_name(f"{prefix.name}.data-{info.shard_id:05d}-of-{num_shards:05d}")
            try:
                files[info.shard_id] = data_path.read_bytes()
            except OSError as exc:
                raise ModelError(f"cannot read TF checkpoint data {data_path}: {exc}") from exc
        data = files[info.shard_id]
        if info.offset < 0 or info.offset + info.size > len(data):
            raise ModelError(f"{prefix}: variable {key!r} lies outside its data file")
        raw = memoryview(data)[info.offset : info.offset + info.size]
        if verify and crc32c(raw) != unmask_crc(info.crc32c):
            raise ModelError(f"{prefix}: crc32c mismatch for variable {key!r} (corrupt data file)")
        arr = np.frombuffer(raw, dtype.newbyteorder(">") if big_endian else dtype, count)
        out[key] = arr.astype(dtype.newbyteorder("="), copy=True).reshape(info.shape)
    logger.debug("read TF checkpoint prefix=%s tensors=%d", prefix, len(out))
    return out


def write_checkpoint(
    prefix: str | os.PathLike[str], tensors: Mapping[str, npt.ArrayLike], *, _compression: int = NO_COMPRESSION
) -> Path:
    """Write ``tensors`` as a one-shard TF V2 checkpoint (``<prefix>.index`` + ``.data-00000-of-00001``).

    The files are what ``tf.train.Saver`` (``BundleWriter``) writes: keys sorted bytewise, the header under ``""``,
    little-endian data, masked crc32c per tensor, uncompressed index. Returns the prefix.
    """
    prefix = _normalise_prefix(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    encoded = sorted((k.encode("utf-8"), k) for k in tensors)
    if encoded and encoded[0][0] == b"":
        raise ModelError("the empty variable name is reserved for the bundle header")
    data = bytearray()
    items: list[tuple[bytes, bytes]] = []
    version = b"\x08" + put_varint(BUNDLE_VERSION)  # VersionDef{producer: 1, min_consumer: 0}
    header = b"\x08\x01" + b"\x1a" + put_varint(len(version)) + version
    items.append((b"", header))
    for raw_key, key in encoded:
        arr = np.asarray(tensors[key])
        code = _TO_TF.get(arr.dtype.newbyteorder("<"))
        if code is None:
            raise ModelError(f"cannot write variable {key!r} of dtype {arr.dtype}")
        payload = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
        dims = [b"\x08" + put_varint(n) if n else b"" for n in arr.shape]  # proto3 omits zero fields
        shape = b"".join(b"\x12" + put_varint(len(d)) + d for d in dims)
        entry = b"\x08" + put_varint(code) + b"\x12" + put_varint(len(shape)) + shape
        if data:
            entry += b"\x20" + put_varint(len(data))
        if payload:
            entry += b"\x28" + put_varint(len(payload))
        entry += b"\x35" + struct.pack("<I", mask_crc(crc32c(payload)))
        items.append((raw_key, entry))
        data += payload
    try:
        prefix.with_name(f"{prefix.name}.data-00000-of-00001").write_bytes(bytes(data))
        prefix.with_name(f"{prefix.name}.index").write_bytes(encode_table(items, _compression))
    except OSError as exc:
        raise ModelError(f"cannot write TF checkpoint {prefix}: {exc}") from exc
    return prefix

"""LevelDB-format SSTables as TensorFlow's ``lib/io/table`` reads and writes them, plus the small codecs they need.

Used by :mod:`expnet_stream.models.tf_checkpoint` for the ``.index`` file of a TF V2 checkpoint. Pure Python + numpy:

* crc32c (Castagnoli) and the LevelDB/TF crc mask (``tensorflow/core/lib/hash/crc32c.h``);
* varints and the protobuf wire format (enough to hand-decode small messages);
* raw snappy decompression (blocks of TF < 1.2 files may be snappy-compressed);
* SSTable blocks (prefix-compressed keys, restart array, 5-byte trailer), index block and the 48-byte footer
  (``tensorflow/core/lib/io/format.{h,cc}``, ``block_builder.cc``, ``table_builder.cc``).

>>> hex(crc32c(b"123456789"))
'0xe3069283'
>>> list(read_table_bytes(encode_table([(b"a", b"1"), (b"ab", b"2")])))
[(b'a', b'1'), (b'ab', b'2')]
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import ModelError

__all__ = [
    "NO_COMPRESSION",
    "SNAPPY_COMPRESSION",
    "crc32c",
    "encode_table",
    "mask_crc",
    "proto_fields",
    "put_varint",
    "read_table",
    "read_table_bytes",
    "read_varint",
    "signed64",
    "snappy_decompress",
    "unmask_crc",
]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 * BlockHandle::kMaxEncodedLength (20) + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + fixed32 masked crc32c
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
BLOCK_SIZE = 4096
RESTART_INTERVAL = 16

# ---------------------------------------------------------------------------------------------------------------------
# crc32c (Castagnoli), vectorised over independent lanes with numpy
# ---------------------------------------------------------------------------------------------------------------------


def _make_table() -> npt.NDArray[np.uint32]:
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(x) for x in _TABLE]


def _raw_crc_py(crc: int, data: bytes | memoryview) -> int:
    """Register update without the initial/final inversion (linear in ``crc`` and in the data)."""
    table = _TABLE_LIST
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(mat: list[int], v: int) -> int:
    """Apply a GF(2) 32x32 matrix given as the images of the 32 unit vectors."""
    acc, i = 0, 0
    while v:
        if v & 1:
            acc ^= mat[i]
        v >>= 1
        i += 1
    return acc


@functools.lru_cache(maxsize=64)
def _zeros_shift_tables(n: int) -> tuple[tuple[int, ...], ...]:
    """Byte tables of the linear map ``register -> register after n zero bytes`` (4 tables of 256 entries)."""
    base = [_raw_crc_py(1 << i, b"\0") for i in range(32)]  # one zero byte
    mat = [1 << i for i in range(32)]  # identity
    while n:  # binary powering; powers of one matrix commute
        if n & 1:
            mat = [_apply(base, m) for m in mat]
        n >>= 1
        if n:
            base = [_apply(base, m) for m in base]
    tables = []
    for byte in range(4):
        t = [0] * 256
        for v in range(1, 256):
            low = v & -v
            t[v] = t[v ^ low] ^ mat[byte * 8 + low.bit_length() - 1]
        tables.append(tuple(t))
    return tuple(tables)


def crc32c(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8], crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, optionally continuing ``crc`` (``crc32c(b"123456789") == 0xE3069283``).

    Large inputs are split into many equal lanes whose registers advance together in numpy, then combined with the
    "append n zero bytes" linear map: about 1 s per 200 MB on one core.
    """
    buf = np.frombuffer(memoryview(data).cast("B"), np.uint8) if not isinstance(data, np.ndarray) else data.ravel()
    n = int(buf.size)
    reg = crc ^ 0xFFFFFFFF
    lane_len = max(16, -(-n // 16384))
    lanes = n // lane_len
    if lanes < 64:
        return _raw_crc_py(reg, buf.tobytes()) ^ 0xFFFFFFFF
    body = buf[: lanes * lane_len].reshape(lanes, lane_len)
    regs = np.zeros(lanes, np.uint32)
    regs[0] = reg  # lane 0 carries the initial register; the others start from 0 (linearity)
    for j in range(lane_len):
        regs = _TABLE[(regs ^ body[:, j]) & 0xFF] ^ (regs >> 8)
    t0, t1, t2, t3 = _zeros_shift_tables(lane_len)
    acc = 0
    for r in regs.tolist():
        acc = (t0[acc & 0xFF] ^ t1[acc >> 8 & 0xFF] ^ t2[acc >> 16 & 0xFF] ^ t3[acc >> 24]) ^ r
    acc = _raw_crc_py(acc, buf[lanes * lane_len :].tobytes())
    return acc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow masked crc: rotate right by 15 bits and add ``0xa282ead8``."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------------------
# varints, protobuf wire format, snappy
# ---------------------------------------------------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ModelError("truncated or overlong varint in TF checkpoint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def put_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int32/int64 are encoded as 10-byte two's complement
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def proto_fields(msg: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield ``(field_number, value)``: ints for varint/fixed fields, bytes for length-delimited ones."""
    pos = 0
    while pos < len(msg):
        key, pos = read_varint(msg, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = read_varint(msg, pos)
        elif wire == 1:
            value = int.from_bytes(msg[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = read_varint(msg, pos)
            value = msg[pos : pos + length]
            pos += length
        elif wire == 5:
            value = int.from_bytes(msg[pos : pos + 4], "little")
            pos += 4
        else:
            raise ModelError(f"unsupported protobuf wire type {wire} in TF checkpoint")
        if pos > len(msg):
            raise ModelError("truncated protobuf message in TF checkpoint")
        yield number, value


def signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def snappy_decompress(data: bytes) -> bytes:
    """Raw snappy (no framing), as LevelDB/TF store compressed blocks."""
    length, pos = read_varint(data, 0)
    out = bytearray()
    try:
        while pos < len(data):
            tag = data[pos]
            pos += 1
            kind = tag & 3
            if kind == 0:  # literal
                n = tag >> 2
                if n >= 60:
                    extra = n - 59
                    n = int.from_bytes(data[pos : pos + extra], "little")
                    pos += extra
                n += 1
                out += data[pos : pos + n]
                pos += n
                continue
            if kind == 1:
                n, offset = 4 + ((tag >> 2) & 7), ((tag >> 5) << 8) | data[pos]
                pos += 1
            elif kind == 2:
                n, offset = (tag >> 2) + 1, int.from_bytes(data[pos : pos + 2], "little")
                pos += 2
            else:
                n, offset = (tag >> 2) + 1, int.from_bytes(data[pos : pos + 4], "little")
                pos += 4
            if offset == 0 or offset > len(out):
                raise ModelError("corrupt snappy block in TF checkpoint (bad copy offset)")
            start = len(out) - offset
            if offset >= n:
                out += out[start : start + n]
            else:  # overlapping copy repeats the last `offset` bytes
                for i in range(n):
                    out.append(out[start + i])
    except IndexError as exc:
        raise ModelError("truncated snappy block in TF checkpoint") from exc
    if len(out) != length:
        raise ModelError(f"corrupt snappy block in TF checkpoint ({len(out)} bytes, header says {length})")
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------------------
# SSTable (LevelDB table format as TensorFlow's lib/io/table writes it)
# ---------------------------------------------------------------------------------------------------------------------


def _read_block(buf: bytes, offset: int, size: int, path: Path) -> bytes:
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or end > len(buf):
        raise ModelError(f"{path}: block [{offset}, {end}) lies outside the file ({len(buf)} bytes)")
    contents = buf[offset : offset + size]
    kind = buf[offset + size]
    (stored,) = struct.unpack_from("<I", buf, offset + size + 1)
    if crc32c(buf[offset : offset + size + 1]) != unmask_crc(stored):
        raise ModelError(f"{path}: block checksum mismatch at offset {offset} (corrupt index file)")
    if kind == NO_COMPRESSION:
        return contents
    if kind == SNAPPY_COMPRESSION:
        return snappy_decompress(contents)
    raise ModelError(f"{path}: unknown block compression type {kind} at offset {offset}")


def _block_entries(block: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise ModelError(f"{path}: block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (1 + num_restarts)
    if limit < 0:
        raise ModelError(f"{path}: bad restart count {num_restarts}")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise ModelError(f"{path}: corrupt block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _decode_handle(value: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = read_varint(value, pos)
    size, pos = read_varint(value, pos)
    return offset, size, pos


def read_table(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of the SSTable file ``path``, in key order; ModelError on any format problem."""
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read TF checkpoint index {path}: {exc}") from exc
    return read_table_bytes(buf, path)


def read_table_bytes(buf: bytes, path: Path | str = "<bytes>") -> Iterator[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of an SSTable held in ``buf`` (``path`` only names it in errors)."""
    path = Path(path)
    if len(buf) < FOOTER_SIZE:
        raise ModelError(f"{path} is too short to be an SSTable ({len(buf)} bytes)")
    footer = buf[-FOOTER_SIZE:]
    lo, hi = struct.unpack_from("<II", footer, FOOTER_SIZE - 8)
    if (hi << 32 | lo) != TABLE_MAGIC:
        raise ModelError(f"{path} is not an SSTable (bad magic number); not a TF V2 checkpoint index")
    _, _, pos = _decode_handle(footer)  # metaindex handle: TF writes an empty metaindex; not needed
    index_offset, index_size, _ = _decode_handle(footer, pos)
    index = _read_block(buf, index_offset, index_size, path)
    for _, handle in _block_entries(index, path):
        offset, size, _ = _decode_handle(handle)
        yield from _block_entries(_read_block(buf, offset, size, path), path)


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            limit = min(len(key), len(self.last_key))
            while shared < limit and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += put_varint(shared) + put_varint(len(key) - shared) + put_varint(len(value))
        self.buf += key[shared:] + value
        self.last_key = key
        self.counter += 1

    def finish(self) -> bytes:
        return bytes(self.buf) + struct.pack(f"<{len(self.restarts) + 1}I", *self.restarts, len(self.restarts))

    def __len__(self) -> int:
        return len(self.buf) + 4 * (len(self.restarts) + 1)


def _snappy_literal(data: bytes) -> bytes:
    """A valid (uncompressing) snappy stream: one literal. Used only to test the snappy read path."""
    n = len(data) - 1
    if n < 0:
        return put_varint(0)
    size = (n.bit_length() + 7) // 8
    tag = bytes([n << 2]) if n < 60 else bytes([(59 + size) << 2]) + n.to_bytes(size, "little")
    return put_varint(len(data)) + tag + data


def encode_table(items: list[tuple[bytes, bytes]], compression: int = NO_COMPRESSION) -> bytes:
    """An SSTable of ``items`` (sorted bytewise by the caller), as TF's ``TableBuilder`` lays it out."""
    out = bytearray()

    def emit(contents: bytes, kind: int = compression) -> bytes:
        if kind == SNAPPY_COMPRESSION:
            contents = _snappy_literal(contents)
        handle = put_varint(len(out)) + put_varint(len(contents))
        trailer = bytes([kind])
        out.extend(contents + trailer + struct.pack("<I", mask_crc(crc32c(contents + trailer))))
        return handle

    index = _BlockBuilder(1)
    block = _BlockBuilder(RESTART_INTERVAL)
    for key, value in items:
        block.add(key, value)
        if len(block) >= BLOCK_SIZE:
            index.add(block.last_key, emit(block.finish()))  # the last key itself is a valid separator
            block = _BlockBuilder(RESTART_INTERVAL)
    if block.counter or not items:
        index.add(block.last_key, emit(block.finish()))
    metaindex = emit(_BlockBuilder(RESTART_INTERVAL).finish(), NO_COMPRESSION)
    index_handle = emit(index.finish(), NO_COMPRESSION)
    footer = (metaindex + index_handle).ljust(FOOTER_SIZE - 8, b"\0")
    out += footer + struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32)
    return bytes(out)

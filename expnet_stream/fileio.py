"""Small file helpers shared by models, engines and exports (no heavy imports)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_writer",
    "bytes_sha256",
    "cache_dir",
    "file_sha256",
    "read_json",
    "staged_path",
    "write_model_json",
]


class _JsonModel(Protocol):
    def model_dump_json(self, *, indent: int | None = None) -> str: ...


Buffer = bytes | bytearray | memoryview
"""What :func:`atomic_write_bytes` and :func:`bytes_sha256` take: ``memoryview(obj)`` of any buffer object (e.g.
TensorRT's ``IHostMemory``) avoids copying a large one into ``bytes`` first."""


@contextlib.contextmanager
def staged_path(path: str | os.PathLike[str], mode: int = 0o644, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Install a file at ``path`` atomically, for writers that need a file name or checks before the install.

    Yields the path of an empty temp file in ``path``'s folder (``.<name>.<random><suffix>``; the folder must exist).
    When the ``with`` block ends normally the temp file gets permission bits ``mode`` (``mkstemp`` creates 0600;
    shipped files, plans and caches must be readable by other users, e.g. the worker's) and is renamed over ``path``,
    so a reader sees the old file or the complete new one, never a partial one. When the block raises (anything:
    a failed check, a writer error, KeyboardInterrupt) the temp file is removed and ``path`` is left as it was.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> with staged_path(folder / "model.onnx", suffix=".tmp.onnx") as tmp:
    ...     _ = tmp.write_bytes(b"onnx")  # e.g. torch.onnx.export(..., tmp), then a check that raises on failure
    >>> out = folder / "model.onnx"
    >>> out.read_bytes(), oct(out.stat().st_mode & 0o777), [p.name for p in folder.iterdir()]
    (b'onnx', '0o644', ['model.onnx'])

    Raises:
        OSError: the temp file cannot be created, changed or renamed (the temp file is removed first).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write ``path`` incrementally and atomically: yields a binary file open on a temp file beside ``path``.

    For code that writes piece by piece (``torch.save(obj, fh)``, ``np.savez(fh, ...)``, a stream of chunks). Same
    guarantees as :func:`staged_path`: renamed over ``path`` with permission bits ``mode`` when the block ends
    normally, removed (``path`` untouched) when it raises. Raises OSError.
    """
    with staged_path(path, mode) as tmp, open(tmp, "wb") as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: Buffer, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename; raises OSError.

    The file gets permission bits ``mode`` (default 0644, whatever the umask); on any error the temp file is removed
    and an existing ``path`` is left intact. ``data`` may be a ``memoryview`` of a large buffer (no copy).
    """
    with atomic_writer(path, mode) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> Path:
    """UTF-8 text variant of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def write_model_json(path: str | os.PathLike[str], model: _JsonModel, error: type[Exception], what: str) -> Path:
    """Write a pydantic model as indented JSON, atomically; an OS error becomes ``error("cannot write <what> ...")``."""
    try:
        return atomic_write_text(path, model.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise error(f"cannot write {what} {path}: {exc}") from exc


def read_json(path: str | os.PathLike[str], error: type[Exception], what: str) -> Any:
    """The decoded JSON of a file; a missing, unreadable or malformed file is ``error("cannot read <what> ...")``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc


def bytes_sha256(data: Buffer) -> str:
    """Hex SHA-256 of bytes already in memory (a plan read for deserializing, a serialized plan)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """The project's cache (exported models, the demo video, label caches): ``$EXPNET_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/expnet-stream``, else ``~/.cache/expnet-stream``. Never inside the repository."""
    env = os.environ.get("EXPNET_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "expnet-stream"

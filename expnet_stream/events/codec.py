"""msgpack codec for the event models, with version checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

from ..errors import SchemaError
from .schema import COEFF_DTYPE, EVENT_TYPES, SUPPORTED_VERSIONS, AnyEvent

E = TypeVar("E", bound=BaseModel)

SCHEMA_DIR = Path(__file__).with_name("schemas")


def encode(event: BaseModel) -> bytes:
    """Serialise an event to msgpack bytes (binary fields as msgpack bin)."""
    data: bytes = msgpack.packb(event.model_dump(mode="python"), use_bin_type=True)
    return data


def _unpack(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError(f"expected bytes, got {type(data).__name__}", "not_bytes")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise SchemaError(f"not a msgpack message: {exc}", "not_msgpack") from exc
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a msgpack map, got {type(obj).__name__}", "not_a_map")
    version = obj.get("v")
    # a hostile "v" may be unhashable (a list, a map): checked by type first, never by set membership alone
    if not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise SchemaError(
            f"unknown schema version {version!r}; this reader supports {sorted(SUPPORTED_VERSIONS)}", "unknown_version"
        )
    return obj


def decode(data: bytes) -> AnyEvent:
    """Decode and validate any event, dispatching on its ``type`` field."""
    obj = _unpack(data)
    kind = obj.get("type")
    model = EVENT_TYPES.get(kind) if isinstance(kind, str) else None  # str only: a list or map key is refused
    if model is None:
        raise SchemaError(f"unknown message type {kind!r}; known: {sorted(EVENT_TYPES)}", "unknown_type")
    try:
        return model.model_validate(obj)  # type: ignore[return-value]
    except ValidationError as exc:
        raise SchemaError(
            f"invalid {kind} message: {exc.error_count()} error(s): {_first_errors(exc)}", "invalid_fields"
        ) from exc


def decode_as(data: bytes, model: type[E]) -> E:
    """Decode an event that must be of one model type."""
    event = decode(data)
    if not isinstance(event, model):
        raise SchemaError(f"expected a {model.__name__}, got {type(event).__name__}", "wrong_type")
    return event


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every event type, keyed by file name."""
    out: dict[str, dict[str, Any]] = {}
    for kind, model in EVENT_TYPES.items():
        schema = model.model_json_schema()
        version = model.model_fields["v"].default
        schema["$id"] = f"https://expnet-stream/schemas/v{version}/{kind}.json"
        schema["description"] = (schema.get("description") or "") + (
            "\n\nWire format: a msgpack map with these keys; 'bytes' fields (format 'binary') are msgpack bin."
        )
        out[f"{kind}.v{version}.json"] = schema
    return out


def write_json_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write the JSON Schemas into ``directory`` (the copies shipped in the repository).

    A type's older versions keep their files there: readers still accept them."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def to_jsonable(event: BaseModel) -> dict[str, Any]:
    """A JSON-friendly dict: coefficients as a float list, other bytes as base64 strings."""
    import base64

    from .schema import Face

    def conv(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [conv(v) for v in obj]
        if isinstance(obj, bytes):
            return base64.b64encode(obj).decode("ascii")
        return obj

    data = event.model_dump(mode="python")
    for key in ("coeff_mean", "coeff_std"):  # EmotionAggregate: coefficient vectors as float lists too
        if isinstance(data.get(key), bytes):
            data[key] = [round(float(x), 6) for x in np.frombuffer(data[key], dtype=COEFF_DTYPE)]
    faces = getattr(event, "faces", None)
    if isinstance(faces, list):
        data["faces"] = [
            {
                **conv(f),
                "coeffs": [round(float(x), 6) for x in face.coefficients],
                "coeffs_smoothed": None
                if face.smoothed_coefficients is None
                else [round(float(x), 6) for x in face.smoothed_coefficients],
            }
            for f, face in zip(data["faces"], faces, strict=True)
            if isinstance(face, Face)
        ]
    return conv(data)  # type: ignore[no-any-return]

"""``expnet-stream mesh``: the 3D expression mesh of a coefficient vector, as .ply / .obj / rendered .png.

Coefficients come from exactly one of:

* ``--coeffs "c1,c2,...,c29"`` with ``--basis ID`` (a shipped basis, e.g. ``mp478-blendshape-pca29-v1``);
* ``--events FILE.jsonl --frame N [--face K] [--stream ID]``: a frame event of ``expnet-stream run --out FILE.jsonl``
  (the event's ``basis_id`` names the basis);
* ``--image IMG [--face K]``: detect faces (plugin ``--detector``, default yunet), crop them with the model's
  contract and run the model with ONNX Runtime: ``--onnx FILE`` (with its ``.contract.json``), else the shipped
  trained model, else the worker's default model.

Coefficients are meaningful only in the basis their model was trained for. A model (or event) whose basis is
``none/untrained`` is refused: then only ``--coeffs`` with an explicit ``--basis`` draws a mesh.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, DetectorError, ModelError

if TYPE_CHECKING:
    from ..models.expression_basis import ExpressionBasis

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``mesh`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser(
        "mesh",
        help="coefficients -> 3D expression mesh (.ply/.obj) and a rendered .png",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--coeffs",
        help='comma-separated coefficients, e.g. "0.5,0,-1.2,..." (needs --basis); one of --coeffs, --events, '
        "--image (default: none)",
    )
    src.add_argument(
        "--events",
        help="JSON-lines events file written by `expnet-stream run --out FILE.jsonl`; one of the three sources "
        "(default: none)",
    )
    src.add_argument(
        "--image", help="image file: detect, crop and run the model on it; one of the three sources (default: none)"
    )
    s.add_argument(
        "--basis",
        default=None,
        help="expression basis id (required with --coeffs; default: the events' or model's basis)",
    )
    s.add_argument(
        "--frame",
        type=int,
        default=None,
        help="frame_seq of the event to use (with --events; default: the first event with a face)",
    )
    s.add_argument(
        "--stream", default=None, help="stream id (with --events, when the file holds several; default: the only one)"
    )
    s.add_argument("--face", type=int, default=0, help="face index in the event / image (default 0)")
    s.add_argument(
        "--onnx", default=None, help="ONNX model with its .contract.json (with --image; default: the shipped model)"
    )
    s.add_argument("--detector", default="yunet", help="face detector plugin (with --image)")
    s.add_argument("--ply", default=None, help="write an ASCII PLY mesh here (default: none)")
    s.add_argument("--obj", default=None, help="write a Wavefront OBJ mesh here (default: none)")
    s.add_argument("--png", default=None, help="write a rendered PNG here (default: none)")
    s.add_argument("--size", type=int, default=512, help="PNG side in pixels")
    s.add_argument("--yaw", type=float, default=0.0, help="PNG view yaw in degrees")
    s.add_argument("--pitch", type=float, default=0.0, help="PNG view pitch in degrees")
    s.set_defaults(func=cmd_mesh)


def parse_coeffs(text: str) -> npt.NDArray[np.float32]:
    """``"1,2.5,-3"`` -> float32 array; ConfigError on anything that is not a number."""
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError as exc:
        raise ConfigError(f"--coeffs must be comma-separated numbers: {exc}") from exc
    return np.asarray(values, np.float32)


def coeffs_from_events(
    path: str | Path, frame: int, face: int = 0, stream: str | None = None
) -> tuple[npt.NDArray[np.float32], str]:
    """``(coeffs, basis_id)`` of face ``face`` in the frame event with frame_seq ``frame`` of a ``run --out`` file."""
    matches: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    ev = json.loads(line)
                except ValueError as exc:
                    raise ConfigError(
                        f"{path}:{lineno} is not JSON (give a .jsonl file of `run --out`): {exc}"
                    ) from exc
                if not isinstance(ev, dict) or ev.get("type") != "frame" or ev.get("frame_seq") != frame:
                    continue
                if stream is None or ev.get("stream_id") == stream:
                    matches.append(ev)
    except OSError as exc:
        raise ConfigError(f"cannot read events file {path}: {exc}") from exc
    if not matches:
        where = f" of stream {stream!r}" if stream else ""
        raise ConfigError(f"no frame event with frame_seq={frame}{where} in {path}")
    streams = sorted({str(ev.get("stream_id")) for ev in matches})
    if len(streams) > 1:
        raise ConfigError(f"frame {frame} exists in several streams {streams}; choose one with --stream")
    ev = matches[0]
    faces = ev.get("faces") or []
    if not 0 <= face < len(faces):
        raise ConfigError(
            f"frame {frame} of stream {streams[0]!r} has {len(faces)} face(s); --face {face} is out of range"
        )
    coeffs = faces[face].get("coeffs")
    if not isinstance(coeffs, list):
        raise ConfigError(f"face {face} of frame {frame} has no coefficient list (events must be JSON lines)")
    return np.asarray(coeffs, np.float32), str(ev.get("basis_id", "none/untrained"))


def _default_onnx() -> Path:
    """The shipped trained model if present, else the worker's default model (exported into its cache)."""
    from ..models.mesh import load_expression_basis

    try:
        from ..models.weights import default_model_path

        return Path(default_model_path())
    except (ImportError, ModelError) as exc:
        log.info("no shipped trained model (%s); using the worker's default model", exc)
    from ..config.settings import ModelSettings
    from ..models.export import ensure_onnx
    from ..models.registry import create_model

    settings = ModelSettings()
    if settings.onnx is not None:
        return settings.onnx
    _, contract = create_model(settings.name, seed=0)
    load_expression_basis(contract.basis_id)  # refuses untrained models before spending time on an export
    return ensure_onnx(settings.name, settings.cache_dir / "models")


def coeffs_from_image(
    image: str | Path, onnx: str | Path | None, face: int = 0, detector_name: str = "yunet"
) -> tuple[npt.NDArray[np.float32], str]:
    """``(coeffs, basis_id)`` of face ``face`` (highest detector score first) of an image."""
    import cv2

    from ..engines import create_engine
    from ..faces.crop import crop_faces
    from ..models.contract import PreprocessContract, contract_path_for
    from ..models.mesh import load_expression_basis
    from ..plugin_registry import create

    model_path = Path(onnx) if onnx is not None else _default_onnx()
    contract = PreprocessContract.from_json(contract_path_for(model_path))
    load_expression_basis(contract.basis_id)  # refuse before detection and inference
    loaded = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if loaded is None:
        raise ConfigError(f"cannot read image {image}")
    frame = np.asarray(loaded, np.uint8)
    detector = create("face_detector", detector_name)
    dets = detector.detect(frame)
    if len(dets) == 0:
        raise DetectorError(f"no face found in {image} by detector {detector_name!r}")
    order = np.argsort(-dets.score, kind="stable")
    if not 0 <= face < len(order):
        raise ConfigError(f"{image} has {len(order)} face(s); --face {face} is out of range")
    box = dets.xyxy[order[face]][None, :]
    with create_engine("onnxruntime", model_path) as engine:
        crops = crop_faces(frame, box, engine.contract)
        coeffs = engine.infer(engine.contract.normalize(crops))[0]
    log.info("image=%s face=%d box=%s model_id=%s", image, face, box[0].round(1).tolist(), contract.model_id)
    return np.asarray(coeffs, np.float32), contract.basis_id


def cmd_mesh(args: argparse.Namespace) -> int:
    from ..models.mesh import (
        basis_for_model,
        load_expression_basis,
        mesh_from_coeffs,
        render_mesh_png,
        write_obj,
        write_ply,
    )

    if not (args.ply or args.obj or args.png):
        raise ConfigError("nothing to write: give at least one of --ply, --obj, --png")
    basis: ExpressionBasis
    if args.coeffs is not None:
        if args.basis is None:
            raise ConfigError("--coeffs needs --basis ID: coefficients mean nothing without their expression basis")
        coeffs = parse_coeffs(args.coeffs)
        basis = load_expression_basis(args.basis)
    elif args.events is not None:
        if args.frame is None:
            raise ConfigError("--events needs --frame N (the frame_seq of the event)")
        coeffs, basis_id = coeffs_from_events(args.events, args.frame, args.face, args.stream)
        basis = basis_for_model(basis_id, args.basis)
    else:
        coeffs, basis_id = coeffs_from_image(args.image, args.onnx, args.face, args.detector)
        basis = basis_for_model(basis_id, args.basis)
    vertices, triangles = mesh_from_coeffs(coeffs, basis)
    written: list[str] = []
    if args.ply:
        written.append(str(write_ply(args.ply, vertices, triangles)))
    if args.obj:
        written.append(str(write_obj(args.obj, vertices, triangles)))
    if args.png:
        written.append(str(render_mesh_png(vertices, triangles, args.png, args.size, args.yaw, args.pitch)))
    print(f"wrote {', '.join(written)} (basis {basis.basis_id}, {len(vertices)} vertices)", file=sys.stderr)
    return 0

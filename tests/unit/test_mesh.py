"""Coefficients -> 3D expression mesh, PLY/OBJ files, the software renderer and the ``mesh`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from expnet_stream.cli import mesh_cmd
from expnet_stream.errors import ConfigError, ModelError
from expnet_stream.models.contract import PreprocessContract, contract_path_for
from expnet_stream.models.mesh import (
    basis_for_model,
    load_expression_basis,
    mesh_from_coeffs,
    render_mesh_image,
    render_mesh_png,
    write_obj,
    write_ply,
)
from expnet_stream.train.basis import DEFAULT_BASIS_ID, load_basis

pytestmark = pytest.mark.unit


def _read_ply(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    lines = path.read_text().splitlines()
    assert lines[:2] == ["ply", "format ascii 1.0"]
    end = lines.index("end_header")
    header = lines[:end]
    nv = int(next(ln for ln in header if ln.startswith("element vertex")).split()[-1])
    nf = int(next(ln for ln in header if ln.startswith("element face")).split()[-1])
    body = lines[end + 1 :]
    assert len(body) == nv + nf
    v = np.array([[float(x) for x in ln.split()] for ln in body[:nv]])
    f = np.array([[int(x) for x in ln.split()] for ln in body[nv:]])
    assert (f[:, 0] == 3).all()
    return v, f[:, 1:]


def _read_obj(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    v, f = [], []
    for ln in path.read_text().splitlines():
        parts = ln.split()
        if parts and parts[0] == "v":
            v.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            f.append([int(x.split("/")[0]) - 1 for x in parts[1:4]])
    return np.array(v), np.array(f)


def test_zero_coeffs_give_the_mean_shape() -> None:
    basis = load_basis(DEFAULT_BASIS_ID)
    v, t = mesh_from_coeffs(np.zeros(basis.num_coeffs), DEFAULT_BASIS_ID)
    assert v.dtype == np.float32 and t.dtype == np.int32
    np.testing.assert_allclose(v, basis.mean, atol=1e-6)
    np.testing.assert_array_equal(t, basis.triangles)
    c = np.zeros(basis.num_coeffs, np.float32)
    c[0] = 2.0
    moved, _ = mesh_from_coeffs(c, basis)
    np.testing.assert_allclose(moved - v, 2.0 * basis.std[0] * basis.components[0], atol=1e-5)
    with pytest.raises(ModelError, match="takes 29 coefficients"):
        mesh_from_coeffs(np.zeros(5), basis)


def test_ply_and_obj_parse_back(tmp_path: Path) -> None:
    c = np.random.default_rng(0).normal(size=29).astype(np.float32)
    v, t = mesh_from_coeffs(c, DEFAULT_BASIS_ID)
    for writer, reader, name in ((write_ply, _read_ply, "m.ply"), (write_obj, _read_obj, "m.obj")):
        path = writer(tmp_path / "sub" / name, v, t)
        rv, rt = reader(path)
        np.testing.assert_allclose(rv, v, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(rt, t)
    with pytest.raises(ModelError, match="triangle indices"):
        write_obj(tmp_path / "bad.obj", v, t + len(v))


def test_png_is_rendered(tmp_path: Path) -> None:
    v, t = mesh_from_coeffs(np.zeros(29), DEFAULT_BASIS_ID)
    path = render_mesh_png(v, t, tmp_path / "m.png", size=128, yaw=20, pitch=-10)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (128, 128, 3)
    face = (img < 250).any(axis=2)
    assert 0.2 < face.mean() < 0.9  # a face, not a blank or full canvas
    assert (img[0, 0] == 255).all() and (img[-1, -1] == 255).all()  # white background
    assert len(np.unique(img[face].reshape(-1, 3), axis=0)) > 20  # shaded, not flat
    frontal = render_mesh_image(v, t, size=128)
    assert not np.array_equal(frontal, img)  # the view angles matter


def test_untrained_basis_is_refused() -> None:
    with pytest.raises(ModelError, match=r"none/untrained.*--coeffs with an explicit --basis"):
        load_expression_basis("none/untrained")
    with pytest.raises(ModelError, match="none/untrained"):
        basis_for_model("none/untrained", DEFAULT_BASIS_ID)  # --basis does not rescue a model's coefficients
    with pytest.raises(ModelError, match="not 'other-basis'"):
        basis_for_model(DEFAULT_BASIS_ID, "other-basis")
    with pytest.raises(ModelError, match="unknown expression basis"):
        load_expression_basis("no-such-basis")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    mesh_cmd.register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _event(frame_seq: int, basis_id: str, coeffs: list[list[float]], stream: str = "cam1") -> str:
    faces = [{"track_id": i, "box": [0, 0, 10, 10], "score": 0.9, "coeffs": c} for i, c in enumerate(coeffs)]
    return json.dumps(
        {"type": "frame", "stream_id": stream, "frame_seq": frame_seq, "basis_id": basis_id, "faces": faces}
    )


def test_mesh_command_from_coeffs_and_events(tmp_path: Path) -> None:
    coeffs = ",".join(["0.5"] + ["0"] * 28)
    assert _run(["mesh", "--coeffs", coeffs, "--basis", DEFAULT_BASIS_ID, "--ply", str(tmp_path / "c.ply")]) == 0
    assert (tmp_path / "c.ply").is_file()
    with pytest.raises(ConfigError, match="--coeffs needs --basis"):
        _run(["mesh", "--coeffs", coeffs, "--ply", str(tmp_path / "x.ply")])
    with pytest.raises(ConfigError, match="nothing to write"):
        _run(["mesh", "--coeffs", coeffs, "--basis", DEFAULT_BASIS_ID])

    events = tmp_path / "run.jsonl"
    face0, face1 = [0.0] * 29, [1.0] + [0.0] * 28
    lines = [
        json.dumps({"type": "summary", "stream_id": "cam1"}),
        _event(3, DEFAULT_BASIS_ID, [face0, face1]),
        _event(4, "none/untrained", [face0]),
    ]
    events.write_text("\n".join(lines) + "\n")
    c, basis_id = mesh_cmd.coeffs_from_events(events, 3, face=1)
    assert basis_id == DEFAULT_BASIS_ID and c[0] == 1.0
    out = [str(tmp_path / "e.obj"), "--png", str(tmp_path / "e.png")]
    assert _run(["mesh", "--events", str(events), "--frame", "3", "--face", "1", "--obj", *out]) == 0
    assert (tmp_path / "e.obj").is_file() and (tmp_path / "e.png").is_file()
    with pytest.raises(ModelError, match="none/untrained"):
        _run(["mesh", "--events", str(events), "--frame", "4", "--obj", str(tmp_path / "u.obj")])
    with pytest.raises(ConfigError, match="no frame event with frame_seq=9"):
        mesh_cmd.coeffs_from_events(events, 9)
    with pytest.raises(ConfigError, match="out of range"):
        mesh_cmd.coeffs_from_events(events, 3, face=2)


def test_image_with_untrained_model_is_refused_before_inference(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"  # never opened: the contract is checked first
    PreprocessContract(model_name="expnet_resnet18").to_json(contract_path_for(onnx))
    with pytest.raises(ModelError, match="none/untrained"):
        mesh_cmd.coeffs_from_image(tmp_path / "no-image.jpg", onnx)

"""The package builds without a warning from this project's files, and the wheel holds what a worker needs: the
packaged settings, the ONNX model, the YuNet detector and the schemas, not the torch checkpoint."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")  # keeps the checkout's build/ out of it
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        cwd=build,
        env={"PATH": "/usr/bin:/bin", "PIP_NO_INPUT": "1", "HOME": str(build), "TMPDIR": str(build)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return next(out.glob("expnet_stream-*.whl")), proc.stdout + proc.stderr


def test_build_prints_no_setuptools_warning(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    noisy = [
        line
        for line in log.splitlines()
        if "Warning" in line and ("setuptools" in line or "pyproject" in line or "license" in line.lower())
    ]
    assert not noisy, "\n".join(noisy[:10])
    assert "would be ignored" not in log and "is absent from the `packages` configuration" not in log


def test_wheel_holds_the_worker_and_not_the_checkpoint(wheel: tuple[Path, str]) -> None:
    names = zipfile.ZipFile(wheel[0]).namelist()
    for needed in (
        "expnet_stream/config/demo.yaml",
        "expnet_stream/events/schemas/frame.v1.json",
        "expnet_stream_plugins/detectors/yunet/LICENSE",
        "expnet_stream/models/weights/emotion_head.npz",
    ):
        assert needed in names
    assert any(n.endswith(".onnx") and "/models/weights/" in n for n in names)
    assert any(n.startswith("expnet_stream_plugins/detectors/yunet/") and n.endswith(".onnx") for n in names)
    assert not [n for n in names if n.endswith(".pt")]


def test_metadata_extras_and_python_range() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.11"  # no upper cap: yuface is an extra now
    extras = meta["optional-dependencies"]
    assert any(d.startswith("tensorrt-cu12>=10") for d in extras["tensorrt"])
    assert {"table", "yuface", "tensorrt", "dev"} <= set(extras)
    assert not [d for d in meta["dependencies"] if d.startswith("yuface")]
    assert {d.split(">")[0] for d in extras["table"]} == {"pyarrow", "pandas"}

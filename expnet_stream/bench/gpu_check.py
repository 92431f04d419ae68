"""The device check of issue 14, prepared to run in under 5 minutes on a CUDA host (the device machine).

``python -m expnet_stream.bench.gpu_check --out DIR`` (or ``make gpu-check``):

1. the ``gpu`` tests (``pytest tests/gpu``), exit code and summary line recorded;
2. the torch engine on CUDA, fp16, CUDA graphs off: faces/s of the shipped model and of the paper's ResNet-101
   (untrained: speed does not depend on weights) at batch 1, 8, 32, 128, 256, median of timed repeats after warm-up;
3. the detector on the accelerator: YuNet through ONNX Runtime's CUDA provider when that provider exists, else the
   reason it was not measured.

Writes ``DIR/gpu_check.json``. Without CUDA it writes the reason and exits 0 having measured nothing; it never
pretends a GPU figure. It has not run on a GPU yet (no device was lent to the session that wrote it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 8, 32, 128, 256)


def _cuda() -> str | None:
    """The CUDA device name, or None (checked before any engine exists)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def _time_engine(engine: Any, size: int, batch: int, repeats: int) -> float:
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for _ in range(3):
        engine.infer(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.infer(x)
        times.append(time.perf_counter() - t)
    return float(batch / np.median(times))


def run_check(out: Path, *, tests: bool = True, repeats: int = 20) -> dict[str, Any]:
    result: dict[str, Any] = {"device": _cuda(), "tests": None, "engine_faces_per_s": {}, "detector": None}
    if result["device"] is None:
        result["skipped"] = "no CUDA device (torch.cuda.is_available() is False): nothing measured"
        return result
    if tests:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "tests/gpu"], capture_output=True, text=True, timeout=180
        )
        result["tests"] = {"exit_code": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}
    from ..engines import create_engine
    from ..models.export import ensure_onnx
    from ..models.weights import default_checkpoint_path, default_model_path

    models = {"shipped": default_model_path(), "expnet_resnet101": ensure_onnx("expnet_resnet101", out / "models")}
    checkpoints = {"shipped": default_checkpoint_path()}
    for name, onnx in models.items():
        try:
            engine = create_engine(
                "torch", onnx, checkpoint=checkpoints.get(name), max_batch=max(BATCHES), device="cuda", fp16=True
            )
            size = engine.contract.input_size
            result["engine_faces_per_s"][name] = {b: _time_engine(engine, size, b, repeats) for b in BATCHES}
        except Exception as exc:  # report, never hide
            result["engine_faces_per_s"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            result["detector"] = {"skipped": "onnxruntime has no CUDA provider here (onnxruntime-gpu not installed)"}
        else:
            from ..plugin_registry import create

            det = create("face_detector", "yunet", providers=["CUDAExecutionProvider"])
            frames = [np.zeros((384, 640, 3), np.uint8)] * 16
            det.detect_batch(frames)
            t = time.perf_counter()
            for _ in range(5):
                det.detect_batch(frames)
            result["detector"] = {"frames_per_s_batch16": 80 / (time.perf_counter() - t)}
    except Exception as exc:  # report, never hide
        result["detector"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m expnet_stream.bench.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="output folder (default: %(default)s)")
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu tests")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_check(args.out, tests=not args.no_tests)
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ONNX export checked against torch, and a cache of exported models.

Every exported file is a single self-contained ``.onnx`` (no external data) with a dynamic batch axis, the contract's
input/output names, the contract embedded as metadata (``expnet.contract``) and written next to it as
``<stem>.contract.json``. The file appears only after ONNX Runtime reproduced torch within tolerance (temp file +
rename), so a reader never sees a half-written or unchecked model.

The TorchScript-based exporter (``dynamo=False``) is used: the torch.export-based one needs ``onnxscript``, which is
not a dependency.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError, ExportError, ModelError
from ..fileio import file_sha256, staged_path
from .contract import PreprocessContract, contract_path_for
from .registry import create_model

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "ensure_onnx", "export_onnx", "file_sha256", "onnx_cache_path"]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


def _random_input(contract: PreprocessContract, batch: int, seed: int) -> torch.Tensor:
    # Pixel-like values (BGR minus a mean: about -128..128), not unit noise, so the check sees realistic magnitudes.
    g = torch.Generator().manual_seed(seed)
    s = contract.input_size
    return torch.rand(batch, 3, s, s, generator=g) * 255.0 - 127.5


def _export_view(model: torch.nn.Module, contract: PreprocessContract) -> torch.nn.Module:
    """What is exported: the model itself, or (coefficients, calibrated emotions) when the contract names an output."""
    if contract.emotion_output_name is None:
        return model
    from .expnet import ExpNet, ExpNetWithEmotions

    if not isinstance(model, ExpNet) or model.num_emotions != len(contract.emotion_classes):
        raise ExportError(
            f"contract of {contract.model_name} names {len(contract.emotion_classes)} emotion classes but the model "
            "has no matching emotion head"
        )
    return ExpNetWithEmotions(model, contract.emotion_temperature).eval()


def _output_names(contract: PreprocessContract) -> list[str]:
    names = [contract.output_name]
    if contract.emotion_output_name is not None:
        names.append(contract.emotion_output_name)
    return names


def _torch_export(model: torch.nn.Module, contract: PreprocessContract, path: Path, opset: int) -> None:
    dummy = _random_input(contract, 2, seed=1234)
    outputs = _output_names(contract)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its deprecation
        try:
            torch.onnx.export(
                _export_view(model, contract),
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[contract.input_name],
                output_names=outputs,
                dynamic_axes={contract.input_name: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                do_constant_folding=True,
            )
        except (RuntimeError, ValueError, TypeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise ExportError(f"torch.onnx.export of {contract.model_name} failed: {exc}") from exc


def _embed_metadata(path: Path, contract: PreprocessContract) -> None:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
        if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
            raise ExportError(f"{contract.model_name} was exported with external data; expected one file")
        del proto.metadata_props[:]
        for key, value in (("expnet.model_id", contract.model_id), ("expnet.contract", contract.model_dump_json())):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ExportError(f"cannot post-process ONNX of {contract.model_name}: {exc}") from exc


def _max_abs_diff(model: torch.nn.Module, contract: PreprocessContract, path: Path) -> tuple[float, float]:
    """Max |torch - ORT| and max |torch| over a batch of 3 and a batch of 1 (coefficients and emotions, if any)."""
    from ..engines.onnxruntime_engine import OrtEngine

    diff, scale = 0.0, 0.0
    try:
        engine = OrtEngine(path, contract=contract, max_batch=8)
    except (EngineError, ModelError) as exc:
        raise ExportError(f"ONNX Runtime cannot load the export of {contract.model_name}: {exc}") from exc
    with engine:
        for seed, batch in ((1, 3), (2, 1)):
            x = _random_input(contract, batch, seed)
            with torch.no_grad():
                out = _export_view(model, contract)(x)
            refs = [t.numpy() for t in out] if isinstance(out, tuple) else [out.numpy()]
            try:
                coeffs, emotions = engine.infer_all(x.numpy())
            except EngineError as exc:
                raise ExportError(f"ONNX Runtime failed on the export of {contract.model_name}: {exc}") from exc
            gots = [coeffs] if emotions is None else [coeffs, emotions]
            if [g.shape for g in gots] != [r.shape for r in refs]:
                raise ExportError(
                    f"ONNX output shapes {[g.shape for g in gots]} != torch output shapes {[r.shape for r in refs]}"
                )
            for got, ref in zip(gots, refs, strict=True):
                diff = max(diff, float(np.max(np.abs(got - ref))))
                scale = max(scale, float(np.max(np.abs(ref))))
    return diff, scale


def export_onnx(
    model: torch.nn.Module,
    contract: PreprocessContract,
    out_path: str | os.PathLike[str],
    *,
    opset: int = 17,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> Path:
    """Export ``model`` to ``out_path`` and prove ONNX Runtime agrees with torch; returns ``out_path``.

    The check runs a random batch of 3 and a batch of 1 (dynamic batch axis) through both and raises
    :class:`~expnet_stream.errors.ExportError` with the max abs difference when it exceeds
    ``atol + rtol * max|torch output|``. Also writes ``contract_path_for(out_path)``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        # staged beside out_path, installed (0644) by the rename at the end of the block only if the check passes
        with staged_path(out_path, suffix=".tmp.onnx") as tmp:
            _torch_export(model, contract, tmp, opset)
            _embed_metadata(tmp, contract)
            diff, scale = _max_abs_diff(model, contract, tmp)
            tol = atol + rtol * scale
            logger.info(
                "onnx export check model_id=%s max_abs_diff=%.3g tolerance=%.3g max_abs_output=%.3g opset=%d",
                contract.model_id,
                diff,
                tol,
                scale,
                opset,
            )
            if not diff <= tol:  # also catches NaN
                raise ExportError(
                    f"ONNX Runtime output of {contract.model_id} differs from torch: max abs diff {diff:.3g} > "
                    f"tolerance {tol:.3g} (atol={atol}, rtol={rtol}, max |output| {scale:.3g})"
                )
            contract.to_json(contract_path_for(out_path))
    except OSError as exc:
        raise ExportError(f"cannot write {out_path}: {exc}") from exc
    logger.info("exported onnx path=%s model_id=%s sha256=%s", out_path, contract.model_id, file_sha256(out_path))
    return out_path


def onnx_cache_path(name: str, weights: str, cache_dir: str | os.PathLike[str]) -> Path:
    """``<cache_dir>/<name>@<weights>.onnx``."""
    return Path(cache_dir) / f"{name}@{weights}.onnx"


def ensure_onnx(name: str, cache_dir: str | os.PathLike[str], *, opset: int = 17) -> Path:
    """Path of the ONNX export of ``create_model(name, seed=0)`` (untrained) in ``cache_dir``, exporting it if absent.

    The file is keyed by model name and weights tag; it counts as present only with its contract next to it.
    """
    model, contract = create_model(name, seed=0)
    path = onnx_cache_path(name, contract.weights, cache_dir)
    if path.is_file() and contract_path_for(path).is_file():
        cached = PreprocessContract.from_json(contract_path_for(path))
        if cached.model_dump() == contract.model_dump():
            logger.debug("onnx cache hit path=%s", path)
            return path
        logger.warning("onnx cache contract differs, re-exporting path=%s", path)
    logger.info("onnx cache miss, exporting model=%s path=%s", name, path)
    return export_onnx(model, contract, path, opset=opset)

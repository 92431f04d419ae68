"""Package a trained checkpoint for the repository: fp16-stored ONNX + contract, and an fp16 torch checkpoint.

The ONNX file keeps float32 compute but stores its weights as float16 (each weight is an fp16 initializer followed by
a ``Cast`` to float32, folded by ONNX Runtime at load): half the size. It is written only when ONNX Runtime on the
fp16-stored file agrees with the float32 torch model within ``atol`` on real-looking inputs; otherwise the float32
export is shipped. The torch checkpoint stores conv/linear weights in fp16 and batch-norm statistics in fp32
(``load_state_dict`` casts them back to float32).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..fileio import atomic_write_bytes
from ..models.contract import PreprocessContract, contract_path_for

logger = logging.getLogger(__name__)

__all__ = ["ship_checkpoint", "ship_model", "to_fp16_storage"]

FP16_SAFE_MAX = 60000.0  # initializers with larger magnitudes stay float32


def to_fp16_storage(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Rewrite float32 initializers of ``src`` as float16 + Cast(float32) (those within the fp16 range)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    new_inits, casts = [], []
    for init in graph.initializer:
        values = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if values is not None and values.size > 16 and float(np.abs(values).max()) < FP16_SAFE_MAX:
            arr = values.astype(np.float16)
            half = numpy_helper.from_array(arr, name=f"{init.name}__fp16")
            new_inits.append(half)
            casts.append(
                helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast")
            )
        else:
            new_inits.append(init)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def ship_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    atol: float = 2e-2,
    fp16: bool = True,
    weights_tag: str | None = None,
) -> dict[str, Any]:
    """:func:`ship_model` of the model and contract in ``checkpoint``."""
    from ..models import light as _light  # noqa: F401  (registers the light variants)
    from ..models.registry import load_checkpoint

    model, contract = load_checkpoint(checkpoint)
    return ship_model(model, contract, out_dir, atol=atol, fp16=fp16, weights_tag=weights_tag)


def ship_model(
    model: Any,
    contract: PreprocessContract,
    out_dir: str | os.PathLike[str],
    *,
    atol: float = 2e-2,
    fp16: bool = True,
    weights_tag: str | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``<out_dir>/<model_id>.onnx`` (+ ``.contract.json``) and ``<model_id>.pt``.

    ``weights_tag`` renames the weights (the contract's ``weights`` field, part of the model id).
    """
    import torch

    from ..engines.onnxruntime_engine import OrtEngine
    from ..models import light as _light  # noqa: F401  (registers the light variants)
    from ..models.export import export_onnx
    from ..models.registry import load_checkpoint, save_checkpoint

    if weights_tag:
        contract = contract.model_copy(update={"weights": weights_tag})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = contract.model_id
    onnx_path = out / f"{stem}.onnx"
    info: dict[str, Any] = {"model_id": stem}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        fp32 = export_onnx(model, contract, Path(tmp) / "fp32.onnx")
        chosen = fp32
        if fp16:
            half = to_fp16_storage(fp32, Path(tmp) / "fp16.onnx")
            g = torch.Generator().manual_seed(7)
            crops = (
                (torch.rand(16, contract.crop_size, contract.crop_size, 3, generator=g) * 255).to(torch.uint8).numpy()
            )
            x = contract.normalize(crops)
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            with OrtEngine(half, contract=contract, max_batch=16) as eng:
                got = eng.infer(x)
            diff = float(np.max(np.abs(got - ref)))
            info["fp16_max_abs_diff"] = diff
            if diff <= atol:
                chosen = half
            else:
                logger.warning("fp16 storage breaks parity max_abs_diff=%.3g > %.3g: shipping float32", diff, atol)
        info["onnx_storage"] = "float16" if chosen != fp32 else "float32"
        atomic_write_bytes(onnx_path, chosen.read_bytes())  # 0644 whatever the umask; readers never see a partial
    contract.to_json(contract_path_for(onnx_path))
    pt_path = out / f"{stem}.pt"
    if fp16:
        # Conv/linear weights in fp16; batch-norm statistics stay fp32 (running_var can exceed the fp16 range).
        half_model = copy.deepcopy(model)
        for module in half_model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.half()
        save_checkpoint(pt_path, half_model, contract)
    else:
        save_checkpoint(pt_path, model, contract)
    reloaded, _ = load_checkpoint(pt_path)
    with torch.no_grad():
        z = torch.from_numpy(contract.normalize(np.full((2, contract.crop_size, contract.crop_size, 3), 128, np.uint8)))
        d = float((reloaded.float()(z) - model(z)).abs().max())
    if d > atol:
        raise ExportError(f"fp16 checkpoint differs from the trained model by {d:.3g}")
    info.update(
        onnx=str(onnx_path),
        checkpoint=str(pt_path),
        onnx_bytes=onnx_path.stat().st_size,
        checkpoint_bytes=pt_path.stat().st_size,
        checkpoint_max_abs_diff=d,
    )
    logger.info("shipped %s", info)
    return info

"""Multi-task training on a CUDA GPU (``expnet-stream train --device cuda``): a short run on synthetic caches lands
its weights back on the CPU, loadable, with both heads. Skipped (with the reason) where torch sees no CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def test_multitask_training_runs_on_cuda(tmp_path: Path) -> None:
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import create_model, load_checkpoint
    from expnet_stream.train.predict import predict_crops_all
    from expnet_stream.train.trainer import train
    from tests.unit.test_emotions import multitask_config

    cfg = multitask_config(tmp_path, device="cuda", max_batches_per_epoch=3)
    summary = train(cfg, progress=False)
    rec = summary["history"][0]
    assert np.isfinite(rec["train_loss"]) and 0.0 <= rec["val_emotion_accuracy"] <= 1.0
    model, contract = load_checkpoint(tmp_path / "run" / "final.pt")
    assert model.num_emotions == 8 and next(model.parameters()).device.type == "cpu"
    # it trained: the weights moved from their initialisation
    init, _ = create_model(cfg.model, seed=cfg.seed)
    assert not torch.allclose(model.trunk.conv1.weight.float(), init.trunk.conv1.weight.float())
    # the weights that came back to the CPU compute what they computed on the GPU
    crops = np.random.default_rng(0).integers(0, 255, (4, contract.crop_size, contract.crop_size, 3), np.uint8)
    c_cpu, e_cpu = predict_crops_all(model, contract, crops)
    c_gpu, e_gpu = predict_crops_all(model.to("cuda"), contract, crops)
    assert e_cpu is not None and e_gpu is not None
    np.testing.assert_allclose(c_cpu, c_gpu, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(e_cpu, e_gpu, rtol=1e-2, atol=1e-2)

"""Multi-task training on a CUDA GPU (``expnet-stream train --device cuda``): a short run on synthetic caches lands
its weights back on the CPU, loadable, with both heads. Skipped (with the reason) where torch sees no CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def test_multitask_training_runs_on_cuda(tmp_path: Path) -> None:
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import load_checkpoint
    from expnet_stream.train.trainer import train
    from tests.unit.test_emotions import multitask_config

    cfg = multitask_config(tmp_path, device="cuda", max_batches_per_epoch=3)
    summary = train(cfg, progress=False)
    assert summary["history"][0]["val_emotion_accuracy"] >= 0.0
    model, _ = load_checkpoint(tmp_path / "run" / "final.pt")
    assert model.num_emotions == 7 and next(model.parameters()).device.type == "cpu"

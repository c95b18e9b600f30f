"""CUDA: the model runs on a GPU in fp32 (matching the CPU) and under fp16/bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from mutr import MUTR, MUTRConfig

pytestmark = pytest.mark.cuda


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 5, 3, 96, 128, generator=g), torch.tensor([[0, 5, 6, 7, 2]])


def test_cuda_fp32_matches_cpu() -> None:
    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset("tiny")).eval()
    video, ids = _inputs()
    with torch.no_grad():
        cpu = model(video, input_ids=ids)
        gpu = model.cuda()(video.cuda(), input_ids=ids.cuda())
    for name in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset("tiny")).eval().cuda()
    video, ids = _inputs()
    with torch.no_grad():
        ref = model(video.cuda(), input_ids=ids.cuda())
        with torch.autocast("cuda", dtype=dtype):
            out = model(video.cuda(), input_ids=ids.cuda())
    assert torch.isfinite(out.pred_masks).all() and torch.isfinite(out.pred_logits).all()
    agree = ((out.pred_masks.float() > 0) == (ref.pred_masks > 0)).float().mean()
    assert agree > 0.95

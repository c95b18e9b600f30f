"""mutr's optimised inference paths against the plain module-by-module formulation.

Exact mode (fp32, the default): every path that keeps the official arithmetic is *bitwise* equal to
the module forward (chunked rows, in-place batch norm, ...); the deformable sampler and the dynamic
mask head compute the same function with other rounding, so they are bounded against float64
references. Fast mode (bf16 autocast): finite everywhere and close to exact mode (random weights:
no trained model here, so agreement is only loosely bounded).
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

from mutr import MUTR, MUTRConfig
from mutr.config import HeadsConfig, TransformerConfig
from mutr.model import kernels, ops
from mutr.model.deformable_attention import (MSDeformAttn, multi_scale_deformable_attention,
                                             multi_scale_deformable_attention_grid_sample)
from mutr.model.deformable_transformer import EncoderLayer, encoder_reference_points, valid_ratios
from mutr.model.fusion import EarlyFusion
from mutr.model.heads import DynamicMaskHead
from mutr.model.pixel_decoder import VisionLanguageBlock
from mutr.model.reference import ReferenceTokens

SHAPES = [(9, 14), (5, 7), (3, 4), (2, 2)]


@pytest.fixture
def small_rows(monkeypatch):
    """Chunks of 256 rows, so that the small inputs below span several chunks."""
    monkeypatch.setattr(ops, "ROWS", 256)


@pytest.fixture(scope="module")
def tiny() -> MUTR:
    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset("tiny")).eval()
    with torch.no_grad():  # frozen batch norms with non-trivial statistics
        for m in model.backbone.modules():
            if type(m).__name__ == "FrozenBatchNorm2d":
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _reference(seed: int = 0, words: int = 6, c: int = 32) -> ReferenceTokens:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, words, dtype=torch.bool)
    mask[0, -2:] = True
    return ReferenceTokens.from_features(torch.randn(1, words, c, generator=g), mask)


# ----------------------------------------------------------------------------- deformable sampler
def _sampler_inputs(n=2, lq=11, m=2, d=4, p=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(n, sum(h * w for h, w in SHAPES), m, d, generator=g, dtype=torch.float64)
    # outside [0, 1] too: zero padding
    locations = torch.rand(n, lq, m, len(SHAPES), p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.softmax(torch.randn(n, lq, m, len(SHAPES) * p, generator=g, dtype=torch.float64), -1)
    return value, locations, weights.view(n, lq, m, len(SHAPES), p)


def test_sampler_matches_grid_sample_in_float64() -> None:
    value, loc, w = _sampler_inputs()
    fast = multi_scale_deformable_attention(value, SHAPES, loc, w)
    ref = multi_scale_deformable_attention_grid_sample(value, SHAPES, loc, w)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-12)


def test_sampler_float32_is_as_accurate_as_grid_sample() -> None:
    value, loc, w = _sampler_inputs(n=3, lq=200, seed=1)
    truth = multi_scale_deformable_attention_grid_sample(value, SHAPES, loc, w)
    v, l32, w32 = value.float(), loc.float(), w.float()
    err_fast = (multi_scale_deformable_attention(v, SHAPES, l32, w32).double() - truth).abs().max()
    err_grid = (multi_scale_deformable_attention_grid_sample(v, SHAPES, l32, w32).double() - truth).abs().max()
    assert err_fast < 3 * err_grid + 1e-6


def test_sampler_edges_and_nan() -> None:
    """Exactly on the border, far outside, NaN: border -> bilinear with zeros, outside -> 0, NaN -> 0."""
    value = torch.randn(1, sum(h * w for h, w in SHAPES), 1, 3, dtype=torch.float64)
    loc = torch.tensor([0.0, 1.0, -5.0, 7.0, 0.5]).repeat_interleave(2).view(5, 2).double()
    loc = loc.view(1, 5, 1, 1, 1, 2).expand(1, 5, 1, len(SHAPES), 1, 2).contiguous()
    w = torch.full((1, 5, 1, len(SHAPES), 1), 0.25, dtype=torch.float64)
    fast = multi_scale_deformable_attention(value, SHAPES, loc, w)
    ref = multi_scale_deformable_attention_grid_sample(value, SHAPES, loc, w)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
    loc[0, 2] = float("nan")
    out = multi_scale_deformable_attention(value, SHAPES, loc, w)
    assert torch.isfinite(out).all() and (out[0, 2] == 0).all()


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_msdeformattn_matches_official_formula(ref_dim: int) -> None:
    """The module (planar offsets, reference added by a 0/1 product) against the official
    arithmetic written out with grid_sample, in float64."""
    torch.manual_seed(ref_dim)
    attn = MSDeformAttn(d_model=16, n_levels=len(SHAPES), n_heads=2, n_points=3).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    n, lq = 2, 7
    s = sum(h * w for h, w in SHAPES)
    query, value_in = torch.randn(n, lq, 16).double(), torch.randn(n, s, 16).double()
    reference = torch.rand(n, lq, len(SHAPES), ref_dim).double()
    mask = torch.zeros(n, s, dtype=torch.bool)
    mask[:, -3:] = True
    with torch.no_grad():
        out = attn(query, reference, value_in, SHAPES, mask)  # the embedding_bag sampler
    out_train = attn(query, reference, value_in, SHAPES, mask)  # autograd: the grid_sample sampler

    value = attn.value_proj(value_in).masked_fill(mask[..., None], 0).view(n, s, 2, 8)
    off = attn.sampling_offsets(query).view(n, lq, 2, len(SHAPES), 3, 2)
    w = attn.attention_weights(query).view(n, lq, 2, -1).softmax(-1).view(n, lq, 2, len(SHAPES), 3)
    if ref_dim == 2:
        norm = torch.tensor([[w_, h_] for h_, w_ in SHAPES], dtype=torch.float64)
        loc = reference[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
    else:
        loc = reference[:, :, None, :, None, :2] + off / 3 * reference[:, :, None, :, None, 2:] * 0.5
    expected = attn.output_proj(multi_scale_deformable_attention_grid_sample(value, SHAPES, loc, w))
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out_train, expected, atol=1e-10, rtol=1e-10)


def test_msdeformattn_training_gradients_match_embedding_bag_sampler() -> None:
    """Training samples with grid_sample (fast backward); its gradients for every parameter and
    input equal autograd through the inference sampler (embedding_bag), in float64."""
    torch.manual_seed(5)
    attn = MSDeformAttn(d_model=16, n_levels=len(SHAPES), n_heads=2, n_points=3).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    n, lq, s = 2, 7, sum(h * w for h, w in SHAPES)
    query = torch.randn(n, lq, 16, dtype=torch.float64, requires_grad=True)
    value_in = torch.randn(n, s, 16, dtype=torch.float64, requires_grad=True)
    reference = torch.rand(n, lq, len(SHAPES), 2, dtype=torch.float64) * 1.2 - 0.1
    mask = torch.zeros(n, s, dtype=torch.bool)
    mask[:, -3:] = True
    upstream = torch.randn(n, lq, 16, dtype=torch.float64)
    leaves = [query, value_in, *attn.parameters()]

    grads_grid = torch.autograd.grad((attn(query, reference, value_in, SHAPES, mask) * upstream).sum(), leaves)
    table = attn.value_table(value_in, SHAPES, mask)
    pixels, weights = attn.locations(query.reshape(n * lq, -1), reference.reshape(n * lq, len(SHAPES), 2), SHAPES)
    sampled = attn.sample_rows(table, lq, 0, n * lq, pixels, weights, SHAPES)
    grads_bag = torch.autograd.grad((attn.output_proj(sampled).view(n, lq, -1) * upstream).sum(), leaves)
    assert all(g.abs().sum() > 0 for g in grads_grid)
    for a, b in zip(grads_grid, grads_bag):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- bitwise row chunking
def test_chunks_cover_and_align() -> None:
    for total in (1, 255, 256, 700, 1000, 4095, 4096, 4097, 10000):
        spans = list(ops.chunks(total, 1024))
        assert spans[0][0] == 0 and spans[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(start % 1024 == 0 for start, _ in spans)
        assert all(stop - start >= 512 for start, stop in spans) or len(spans) == 1


@pytest.mark.parametrize("sr", [1, 2])
def test_vision_language_block_rows_are_bitwise(small_rows, sr: int) -> None:
    torch.manual_seed(sr)
    blk = VisionLanguageBlock(32, 4, 64, 0.1, sr).eval()
    t, h, w = 3, 12, 17
    x, pos = torch.randn(t, 32, h, w), torch.randn(t, h, w, 32).permute(0, 3, 1, 2)
    mask = torch.zeros(t, h, w, dtype=torch.bool)
    with torch.no_grad():
        fast = blk(x, pos, mask, _reference(), t)
        with kernels.reference_kernels():
            ref = blk(x, pos, mask, _reference(), t)
    assert torch.equal(fast, ref) and fast.stride() == ref.stride()


def test_early_fusion_rows_are_bitwise(small_rows) -> None:
    torch.manual_seed(0)
    fusion = EarlyFusion(32, 4).eval()
    t, h, w = 3, 11, 19
    level = torch.randn(t, 32, h, w)
    seq = level.reshape(1, t, 32, h * w).permute(1, 3, 0, 2).reshape(t * h * w, 1, 32)
    with torch.no_grad():
        assert torch.equal(fusion.rows(level, _reference(), 1, t), fusion(seq, _reference()))


def test_encoder_layer_rows_are_bitwise(small_rows) -> None:
    torch.manual_seed(0)
    layer = EncoderLayer(TransformerConfig(d_model=32, nheads=4, dim_feedforward=64)).eval()
    n, s = 3, sum(h * w for h, w in SHAPES)
    src, pos = torch.randn(n, s, 32), torch.randn(n, s, 32)
    masks = [torch.zeros(n, h, w, dtype=torch.bool) for h, w in SHAPES]
    ref = encoder_reference_points(SHAPES, torch.stack([valid_ratios(m) for m in masks], 1))
    with torch.no_grad():
        fast = layer(src, pos, ref, SHAPES, None)
        with kernels.reference_kernels():
            slow = layer(src, pos, ref, SHAPES, None)
    assert torch.equal(fast, slow)


def test_backbone_exact_path_is_bitwise(tiny: MUTR) -> None:
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fast = tiny.backbone(images)
        with kernels.reference_kernels():
            ref = tiny.backbone(images)
    for a, b in zip(fast, ref):
        assert torch.equal(a, b)


def test_mask_head_per_frame_matches_grouped_convolution() -> None:
    torch.manual_seed(0)
    head = DynamicMaskHead(HeadsConfig(mask_dim=32), 32).double().eval()
    q, feats = torch.randn(1, 3, 5, 32).double(), torch.randn(1, 3, 32, 14, 20).double()
    ref_xy, sizes = torch.rand(1, 3, 5, 2).double(), torch.tensor([[56, 80]])
    with torch.no_grad():
        fast = head(q, feats, ref_xy, sizes)
        with kernels.reference_kernels():
            slow = head(q, feats, ref_xy, sizes)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-10)


def test_mask_head_folds_the_projection_convolution() -> None:
    """Inference hands the mask head the pixel decoder's last conv unapplied; the folded first
    layer (one conv with Q*8 outputs per frame) must equal projecting first, on either path.
    Expected values: the head on projection(feats), the unfolded formulation, in float64."""
    torch.manual_seed(1)
    head = DynamicMaskHead(HeadsConfig(mask_dim=16), 32).double().eval()
    projection = nn.Conv2d(24, 16, 3, padding=1).double()
    q, pre = torch.randn(1, 3, 5, 32).double(), torch.randn(1, 3, 24, 14, 20).double()
    ref_xy, sizes = torch.rand(1, 3, 5, 2).double(), torch.tensor([[56, 80]])
    with torch.no_grad():
        projected = projection(pre.flatten(0, 1)).unflatten(0, (1, 3))
        expected = head(q, projected, ref_xy, sizes)
        folded = head(q, pre, ref_xy, sizes, projection)
        with kernels.reference_kernels():
            generic = head(q, pre, ref_xy, sizes, projection)
    assert folded.shape == (1, 3, 5, 14, 20)
    assert expected.abs().max() > 1  # not a degenerate all-zero comparison
    torch.testing.assert_close(folded, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(generic, expected, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- whole model
def _inputs(t: int = 5):
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, t, 3, 72, 104, generator=g), torch.tensor([[0, 11, 12, 13, 14, 2]])


def test_model_default_matches_reference_kernels(tiny: MUTR) -> None:
    video, ids = _inputs()
    with torch.no_grad():
        out = tiny(video, input_ids=ids)
        with kernels.reference_kernels():
            ref = tiny(video, input_ids=ids)
    for name in ("pred_logits", "pred_boxes", "pred_masks"):
        a, b = getattr(out, name), getattr(ref, name)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_model_fast_mode_bf16_autocast(tiny: MUTR) -> None:
    video, ids = _inputs()
    with torch.no_grad():
        exact = tiny(video, input_ids=ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = tiny(video, input_ids=ids)
    for name in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.isfinite(getattr(fast, name)).all(), name
    rel = (fast.pred_logits.float() - exact.pred_logits).norm() / exact.pred_logits.norm()
    assert rel < 0.05
    a, b = fast.pred_masks.float() > 0, exact.pred_masks > 0
    iou = ((a & b).sum() / (a | b).sum().clamp(min=1)).item()
    assert iou > 0.8  # random weights: a loose bound; bench/official_vs_mutr.py reports the r50 numbers


def test_training_forward_takes_the_differentiable_path(tiny: MUTR) -> None:
    video, ids = _inputs(2)
    tiny.train()
    try:
        out = tiny(video, input_ids=ids)
        out.pred_masks.mean().backward()
        grads = [p.grad for p in tiny.transformer.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
        # the deformable offsets get a gradient through the bilinear weights
        offsets = tiny.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad
        assert offsets is not None and offsets.abs().sum() > 0
    finally:
        tiny.zero_grad(set_to_none=True)
        tiny.eval()


def test_msdeformattn_autocast_training_reaches_every_parameter() -> None:
    """Under autocast with autograd (mixed-precision training) the projections must use the live
    weights: the inference kernels' cached casts are detached and would starve them of gradient."""
    torch.manual_seed(3)
    attn = MSDeformAttn(d_model=16, n_levels=len(SHAPES), n_heads=2, n_points=3)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    n, lq, s = 2, 7, sum(h * w for h, w in SHAPES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(torch.randn(n, lq, 16), torch.rand(n, lq, len(SHAPES), 2), torch.randn(n, s, 16), SHAPES)
    out.float().square().sum().backward()
    starved = [name for name, p in attn.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert starved == []


def test_autocast_training_step_reaches_the_same_parameters(tiny: MUTR) -> None:
    """A mixed-precision training step (CPU bf16 autocast here; CUDA AMP takes the same code
    path: the heads run in float32 on low-precision features) is finite and sends gradient to
    exactly the parameters a float32 step reaches."""
    video, ids = _inputs(2)

    def reached(autocast: bool) -> set[str]:
        tiny.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = tiny(video, input_ids=ids)
        loss = sum(o.pred_masks.float().square().mean() + o.pred_logits.float().mean() + o.pred_boxes.float().mean()
                   for o in [out, *out.aux_outputs])
        assert torch.isfinite(loss)
        loss.backward()
        return {n for n, p in tiny.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    tiny.train()
    try:
        fp32, mixed = reached(False), reached(True)
    finally:
        tiny.zero_grad(set_to_none=True)
        tiny.eval()
    assert len(fp32) > 100 and mixed == fp32


def test_bf16_ffn_on_packed_weights_follows_the_weights() -> None:
    """Fast mode's FFN runs on oneDNN-packed bf16 weights cached per layer: it must equal the
    module's bf16-autocast arithmetic (within bf16 rounding) and rebuild when the weights change
    in place (load_state_dict copies into them)."""
    torch.manual_seed(4)
    l1, l2 = nn.Linear(32, 64), nn.Linear(64, 32)
    x = torch.randn(300, 32)

    def expected() -> torch.Tensor:  # float64 of the bf16-rounded operands: what bf16 products approximate
        r = lambda t: t.bfloat16().double()  # noqa: E731
        hidden = (r(x) @ r(l1.weight).t() + r(l1.bias)).relu()
        return r(hidden) @ r(l2.weight).t() + r(l2.bias)

    with torch.no_grad():
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = ops.ffn(x, l1, l2)
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out.double(), expected(), atol=0.05, rtol=0.02)
            l1.weight.mul_(-2.0)  # in place: the cached packed weight must not survive this

"""The MUTR model on the tiny preset: shapes, gradients, eval/train paths, batching, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mutr import MUTR, MUTRConfig
from mutr.errors import InputError, MutrError


@pytest.fixture(scope="module")
def tiny() -> MUTR:
    torch.manual_seed(0)
    return MUTR(MUTRConfig.preset("tiny")).eval()


def _ids(*rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), 1)
    am = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        am[i, : len(r)] = 1
    return ids, am


@pytest.mark.parametrize("t", [1, 2, 4, 5, 9])
def test_output_shapes_and_values(tiny: MUTR, t: int) -> None:
    torch.manual_seed(t)
    video = torch.randn(1, t, 3, 67, 93)  # odd sizes: /4 -> 17x24 (ceil), as the conv stem gives
    ids, am = _ids([0, 11, 12, 13, 2])
    with torch.no_grad():
        out = tiny(video, input_ids=ids, attention_mask=am)
    assert out.pred_logits.shape == (1, t, 5, 1)
    assert out.pred_boxes.shape == (1, t, 5, 4)
    assert out.pred_masks.shape == (1, t, 5, 17, 24)
    for x in (out.pred_logits, out.pred_boxes, out.pred_masks):
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert ((out.pred_boxes > 0) & (out.pred_boxes < 1)).all()
    assert out.aux_outputs == []
    # the video queries are shared by all frames, so the class logits are equal across frames
    assert torch.allclose(out.pred_logits, out.pred_logits[:, :1].expand_as(out.pred_logits))
    # but masks depend on each frame's content
    if t > 1:
        assert not torch.allclose(out.pred_masks[:, 0], out.pred_masks[:, 1])


def test_padding_mask_changes_output_and_is_respected(tiny: MUTR) -> None:
    torch.manual_seed(1)
    video = torch.randn(1, 2, 3, 64, 96)
    mask = torch.zeros(1, 2, 64, 96, dtype=torch.bool)
    mask[..., 48:, :] = True
    mask[..., :, 80:] = True
    ids, am = _ids([0, 5, 6, 2])
    with torch.no_grad():
        plain = tiny(video, input_ids=ids, attention_mask=am)
        padded = tiny(video, mask, input_ids=ids, attention_mask=am)
    assert padded.pred_masks.shape == plain.pred_masks.shape
    assert torch.isfinite(padded.pred_masks).all()
    assert not torch.allclose(plain.pred_masks, padded.pred_masks)


def _zero_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0


def test_every_trainable_parameter_gets_a_gradient() -> None:
    torch.manual_seed(2)
    model = MUTR(MUTRConfig.preset("tiny")).train()
    # The official init zeroes the last box layer and the deformable attention weights, which
    # legitimately blocks some gradients at step 0; perturb so the test checks connectivity.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, am = _ids([0, 7, 8, 9, 2], [0, 4, 2])
    out = model(torch.randn(2, 3, 3, 64, 64), input_ids=ids, attention_mask=am)
    assert len(out.aux_outputs) == 1  # tiny has 2 decoder levels
    loss = sum(o.pred_logits.sum() + o.pred_boxes.sum() + o.pred_masks.mean() for o in [out, *out.aux_outputs])
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert no_grad == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # official trainability: ResNet stem and stage 1 frozen, the unused RoBERTa pooler frozen
    assert any(n.startswith("backbone.body.embedder.") for n in frozen)
    assert any(n.startswith("backbone.body.encoder.stages.0.") for n in frozen)
    assert not any(n.startswith("backbone.body.encoder.stages.1.") for n in frozen)


def test_eval_uses_level0_heads_and_train_uses_last(tiny: MUTR) -> None:
    """Spec §9/§18.1: eval logits come from class_embed[0] on MTI's last-layer output."""
    torch.manual_seed(3)
    model = MUTR(MUTRConfig.preset("tiny")).eval()
    video = torch.randn(1, 3, 3, 64, 64)
    ids, am = _ids([0, 5, 6, 2])
    with torch.no_grad():
        base = model(video, input_ids=ids, attention_mask=am)
        model.heads.class_embed[1].weight.zero_()
        same = model(video, input_ids=ids, attention_mask=am)
        assert torch.equal(base.pred_logits, same.pred_logits)
        model.heads.class_embed[0].weight.zero_()
        changed = model(video, input_ids=ids, attention_mask=am)
        assert not torch.allclose(base.pred_logits, changed.pred_logits)
        # train mode (no dropout) reads the last level and returns aux outputs for the others
        _zero_dropout(model)
        model.train()
        train = model(video, input_ids=ids, attention_mask=am)
        assert len(train.aux_outputs) == 1
        assert torch.allclose(train.pred_logits, torch.zeros(()) + model.heads.class_embed[1].bias)


def test_mti_shifts_windows_only_at_inference() -> None:
    """With one frame the shifted window equals the plain one (padding is masked either way);
    with 8 frames the shift crosses window borders and changes the result."""
    from mutr.config import MTIConfig
    from mutr.model.mti import MTI

    torch.manual_seed(4)
    mti = MTI(MTIConfig(enc_layers=2, dec_layers=1, nheads=4, dim_feedforward=32), 16, 3)
    _zero_dropout(mti)
    for t, equal in [(1, True), (8, False)]:
        x = torch.randn(1, 1, t, 3, 16)
        out_eval = mti.eval()(x)
        out_train = mti.train()(x)
        assert out_eval.shape == (1, 1, 3, 16)
        assert torch.allclose(out_eval, out_train, atol=1e-6) == equal


def test_batch_of_two_equals_each_video_alone(tiny: MUTR) -> None:
    torch.manual_seed(5)
    videos = torch.randn(2, 5, 3, 64, 80)
    ids, am = _ids([0, 21, 22, 23, 24, 2], [0, 31, 2])
    with torch.no_grad():
        both = tiny(videos, input_ids=ids, attention_mask=am)
        for i in range(2):
            n = int(am[i].sum())
            alone = tiny(videos[i : i + 1], input_ids=ids[i : i + 1, :n], attention_mask=am[i : i + 1, :n])
            for name in ("pred_logits", "pred_boxes", "pred_masks"):
                assert torch.allclose(getattr(both, name)[i], getattr(alone, name)[0], atol=1e-5, rtol=1e-4), name


def test_reference_is_reusable(tiny: MUTR) -> None:
    video = torch.randn(1, 2, 3, 64, 64)
    ids, am = _ids([0, 5, 6, 2])
    with torch.no_grad():
        ref = tiny.encode_reference(ids, am)
        a = tiny(video, reference=ref)
        b = tiny(video, input_ids=ids, attention_mask=am)
    assert ref.features.shape == (1, 4, 32) and ref.pos.shape == (1, 4, 32) and ref.mask.shape == (1, 4)
    assert torch.equal(a.pred_masks, b.pred_masks)


@pytest.mark.parametrize(
    "video, kwargs, match",
    [
        (torch.randn(3, 3, 64, 64), {}, "shape \\[B, T, 3, H, W\\]"),
        (torch.randn(1, 2, 4, 64, 64), {}, "3 \\(RGB\\) channels"),
        (torch.randn(1, 0, 3, 64, 64), {}, "empty"),
        (torch.randn(1, 1, 3, 8, 64), {}, "too small"),
        (torch.randn(1, 1, 3, 64, 64), {"no_reference": True}, "exactly one reference"),
        (torch.randn(1, 1, 3, 64, 64), {"audio": torch.randn(1, 2, 1, 96, 64)}, "no audio encoder"),
        (torch.randn(1, 1, 3, 64, 64), {"input_ids": torch.tensor([[0, 9999, 2]])}, "token ids"),
    ],
)
def test_bad_input_raises_typed_errors(tiny: MUTR, video, kwargs, match) -> None:
    kwargs = dict(kwargs)
    if not kwargs.pop("no_reference", False) and "input_ids" not in kwargs and "audio" not in kwargs:
        kwargs["input_ids"] = torch.tensor([[0, 5, 2]])
    with pytest.raises(MutrError, match=match) as info:
        tiny(video, **kwargs)
    assert isinstance(info.value, ValueError)


def test_save_and_load_roundtrip(tmp_path, tiny: MUTR) -> None:
    tiny.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MUTR.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == tiny.config
    video = torch.randn(1, 2, 3, 64, 64)
    ids, am = _ids([0, 5, 6, 2])
    with torch.no_grad():
        assert torch.equal(loaded(video, input_ids=ids).pred_masks, tiny(video, input_ids=ids).pred_masks)


def test_loading_wrong_weights_lists_keys(tmp_path, tiny: MUTR) -> None:
    from safetensors.torch import load_file, save_file

    from mutr.errors import CheckpointError

    tiny.save_pretrained(tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    state.pop("query_embed.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing: query_embed.weight.*1 unexpected: extra.weight"):
        MUTR.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        MUTR.from_pretrained(tmp_path)

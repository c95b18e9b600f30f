"""Parameter groups (names, order, lrs), the schedule and gradient clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mutr import MUTR, MUTRConfig
from mutr.train.optim import (GROUP_ORDER, LearningRates, build_optimizer, build_scheduler, clip_gradients,
                              group_of, multistep_factor, param_groups)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MUTR(MUTRConfig.preset("tiny-joint"))


def test_group_of_follows_official_precedence():
    assert group_of("backbone.body.encoder.stages.1.layers.0.layer.0.convolution.weight") == "backbone"
    assert group_of("text_encoder.model.encoder.layer.0.attention.self.query.weight") == "text_encoder"
    assert group_of("text_encoder.resizer.fc.weight") == "text_encoder"
    assert group_of("transformer.encoder.layers.0.self_attn.sampling_offsets.weight") == "linear_proj"
    assert group_of("transformer.reference_points.weight") == "linear_proj"
    assert group_of("audio_encoder.encoder.features.0.weight") == "audio_encoder"
    assert group_of("audio_encoder.resizer.fc.weight") == "rest"
    assert group_of("transformer.decoder.layers.0.cross_attn.attention_weights.weight") == "rest"
    assert group_of("mti.query_feat.weight") == "rest"


def test_param_groups_cover_trainable_parameters_once(model):
    groups = param_groups(model, LearningRates())
    assert [g["name"] for g in groups] == list(GROUP_ORDER)  # official order first (§19.7), audio last
    assert [g["lr"] for g in groups] == [1e-4, 6e-6, 1e-5, 1e-4, 1e-4]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable
    frozen = {id(p) for n, p in model.named_parameters() if "pooler" in n or "stages.0." in n}
    assert frozen and not frozen & set(ids)  # RoBERTa pooler and the ResNet stem/stage 0 stay out
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        assert all(group_of(names[id(p)]) == g["name"] for p in g["params"])
        assert g["params"], g["name"]


def test_optimizer_is_adamw_with_weight_decay(model):
    opt = build_optimizer(model, LearningRates(lr=2e-4, lr_backbone=1e-5, lr_text_encoder=3e-5,
                                               lr_linear_proj_mult=0.5, lr_audio_encoder=7e-5))
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {
        "rest": 2e-4, "backbone": 1e-5, "text_encoder": 3e-5, "linear_proj": 1e-4, "audio_encoder": 7e-5}
    assert all(g["weight_decay"] == 5e-4 for g in opt.param_groups)


def test_frozen_encoder_leaves_an_empty_group():
    model = MUTR(MUTRConfig.preset("tiny"))
    model.text_encoder.requires_grad_(False)
    groups = param_groups(model)
    assert [g["name"] for g in groups] == list(GROUP_ORDER)
    assert groups[2]["params"] == [] and groups[4]["params"] == []
    build_optimizer(model)  # empty groups are allowed


def test_multistep_schedule_and_warmup():
    # official: 12 epochs, drops at 8 and 10, gamma .1 -> factor 1, .1, .01
    assert multistep_factor(0, [8, 10]) == 1
    assert multistep_factor(7, [8, 10]) == 1
    assert multistep_factor(8, [8, 10]) == pytest.approx(0.1)
    assert multistep_factor(10, [8, 10]) == pytest.approx(0.01)
    # warm-up over 4 steps from .001: step 2 -> .001 * .5 + .5 = .5005
    assert multistep_factor(2, [], warmup_steps=4, warmup_factor=0.001) == pytest.approx(0.5005)
    assert multistep_factor(4, [], warmup_steps=4) == 1
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, [2, 3], gamma=0.1)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert set(sched.state_dict()) >= {"last_epoch", "base_lrs"}


def test_clip_gradients_scales_to_max_norm():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # norm 5
    norm = clip_gradients([a, b], 0.1)
    assert norm.item() == pytest.approx(5.0)
    total = torch.cat([a.grad, b.grad]).norm().item()
    assert total == pytest.approx(0.1, rel=1e-4)

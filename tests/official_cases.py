"""Shared by the official-equivalence tests: run mutr on the harness's cases and compare.

The harness is ../shared/tools/official_mutr/run_official.py: it runs the *official* MUTR and
saves ``inputs.pt`` / ``outputs.pt`` (see tests/fixtures/official/README.md).
"""

from __future__ import annotations

import contextlib
import math
import zlib

import torch
from torch import nn

from mutr import MUTR
from mutr.convert import convert_state_dict

OUTPUT_NAMES = ("pred_logits", "pred_boxes", "pred_masks")


def keyed_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """The harness's ``--init keyed`` weights, rebuilt from its documented rule (keyed_init in
    ../shared/tools/official_mutr/run_official.py): each tensor is a function of (seed, key, shape)
    with its own generator seeded ``seed * 1_000_003 + crc32(key)``; aliases take their twin's
    value. ``*relative_position_index`` buffers (Swin / Video-Swin) are int64 indices the harness
    keeps as computed from the window size: they are left out here, and the converter recomputes
    them."""
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("relative_position_index"):
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        if key.endswith("running_var"):
            v = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            v = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(("pos_embed", "cls_token", "mask_token")):
            v = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and key.endswith(("weight", "gamma")):
            v = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) <= 1:
            v = 0.02 * torch.randn(shape, generator=g)
        else:
            v = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        out[key] = v
    alias = "transformer.decoder.bbox_embed."
    for key in out:
        if key.startswith(alias):
            out[key] = out[key[len("transformer.decoder."):]]
    return out


def build_from_official(state: dict[str, torch.Tensor]) -> MUTR:
    converted, config = convert_state_dict(state)
    with _no_random_init():
        model = MUTR(config)
    model.load_state_dict_checked(converted)  # strict: every parameter and buffer is overwritten
    return model.eval()


def _no_random_init():
    """Skip the random init of the model's weights (seconds for a 350M-parameter backbone): the
    strict load right after overwrites every parameter and persistent buffer, and the derived
    non-persistent buffers (relative position indices, position ids) are built by the module
    constructors, not by init functions. transformers' own context where it has one."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: plain init
        return contextlib.nullcontext()
    return no_init_weights()


def _no_dropout_train(model: MUTR) -> None:
    """The harness's "train_nodropout": train mode, every dropout and drop path 0, text encoder in eval."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
        if hasattr(m, "drop_prob"):  # stochastic depth of the transformer / ConvNeXt backbones
            m.drop_prob = 0.0
    if model.text_encoder is not None:
        model.text_encoder.model.eval()


def run_cases(model: MUTR, inputs: dict) -> dict[str, dict[str, torch.Tensor]]:
    ids, am = inputs["input_ids"], inputs["attention_mask"]
    cases = inputs["cases"]
    results = {}
    with torch.no_grad():
        ref = model.encode_reference(ids, am)
        for mode in ("eval", "train_nodropout"):
            if mode == "eval":
                model.eval()
            else:
                _no_dropout_train(model)
            for name, case in cases.items():
                key = f"{mode}_{name}"
                if "tensors" in case:
                    out = model(case["tensors"], case["mask"], reference=ref)
                else:
                    out = model(case["video"][None], reference=ref)
                results[key] = {n: getattr(out, n) for n in OUTPUT_NAMES}
                for i, aux in enumerate(out.aux_outputs):
                    results[key].update({f"aux{i}.{n}": getattr(aux, n) for n in OUTPUT_NAMES})
    model.eval()
    return results


def _flatten(expected: dict) -> dict[str, torch.Tensor]:
    flat = {n: expected[n] for n in OUTPUT_NAMES}
    for i, aux in enumerate(expected.get("aux_outputs") or []):
        flat.update({f"aux{i}.{n}": aux[n] for n in OUTPUT_NAMES})
    return flat


def max_errors(ours: dict, theirs: dict) -> dict[str, dict[str, float]]:
    """case -> output -> max |mutr - official| (aux outputs folded into their output's maximum)."""
    table = {}
    for case, expected in theirs.items():
        if case not in ours:
            continue
        errs = {n: 0.0 for n in OUTPUT_NAMES}
        for name, ref in _flatten(expected).items():
            errs[name.split(".")[-1]] = max(errs[name.split(".")[-1]], (ours[case][name] - ref).abs().max().item())
        table[case] = errs
    return table


def assert_close(ours: dict, theirs: dict, atol: float = 1e-4, rtol: float = 1e-4, scale: float = 0.0) -> None:
    """Every output within atol + rtol * |official|, atol raised by ``scale`` * max |official| of
    that output (float32 noise grows with the magnitude of the whole output, not of each element)."""
    compared = 0
    for case, expected in theirs.items():
        assert case in ours, f"mutr did not run case {case}"
        for name, ref in _flatten(expected).items():
            tol = atol + scale * ref.abs().max().item()
            torch.testing.assert_close(ours[case][name], ref, atol=tol, rtol=rtol, msg=f"{case}.{name}")
            compared += 1
    assert compared >= 15, f"only {compared} outputs compared; the fixture is missing cases"

"""MUTR: wires the components together; each one lives in its own module.

Data flow (one clip): frames -> backbone -> input_proj -> early fusion with the reference -> MTA
(sentence query) -> deformable encoder/decoder per frame -> MTI (video queries) -> heads, with the
cross-modal FPN making the mask features. Text and audio both arrive as ``ReferenceTokens``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from mutr.config import MUTRConfig
from mutr.errors import CheckpointError, ConfigError, InputError
from mutr.files import atomic_write
from mutr.model import kernels
from mutr.model.backbone import Backbone
from mutr.model.deformable_transformer import DeformableTransformer, inverse_sigmoid
from mutr.model.fusion import EarlyFusion
from mutr.model.heads import PredictionHeads
from mutr.model.mta import MTA
from mutr.model.mti import MTI
from mutr.model.pixel_decoder import CrossModalFPNDecoder
from mutr.model.position_encoding import resize_mask, sine_2d
from mutr.model.reference import ReferenceTokens

MIN_SIDE = 32  # below this the stride-64 level has nothing left to look at


@dataclass
class MUTROutput:
    """``pred_logits`` [B,T,Q,K]; ``pred_boxes`` [B,T,Q,4] (cx, cy, w, h in 0..1 of the unpadded
    frame); ``pred_masks`` [B,T,Q,H/4,W/4] logits; ``aux_outputs`` one per earlier decoder level
    (training only; empty in eval)."""

    pred_logits: Tensor
    pred_boxes: Tensor
    pred_masks: Tensor
    aux_outputs: list["MUTROutput"] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"pred_logits": self.pred_logits, "pred_boxes": self.pred_boxes, "pred_masks": self.pred_masks}
        if self.aux_outputs:
            out["aux_outputs"] = [a.to_dict() for a in self.aux_outputs]
        return out


@dataclass
class VisualFeatures:
    """What ``MUTR.encode_video`` computes once per clip and every prompt reuses.

    ``res2`` [B*T, C2, H/4, W/4]; ``proj`` the four projected levels (/8, /16, /32, /64)
    [B*T, C, h, w]; ``masks``/``poses`` for the five levels /4 .. /64; ``image_sizes`` [B, 2]
    unpadded (h, w) in pixels, for the mask head's relative coordinates.
    """

    batch_size: int
    num_frames: int
    res2: Tensor
    proj: list[Tensor]
    masks: list[Tensor]
    poses: list[Tensor]
    image_sizes: Tensor


def _input_proj(cin: int, cout: int, groups: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(groups, cout))


class MUTR(nn.Module):
    def __init__(self, config: MUTRConfig) -> None:
        super().__init__()
        if not isinstance(config, MUTRConfig):
            raise ConfigError("MUTR(config) needs a MUTRConfig; use MUTRConfig.preset('r50') or similar")
        tc = config.transformer
        if tc.num_feature_levels != 4:
            raise ConfigError("transformer.num_feature_levels must be 4 (res3..res5 plus one stride-64 level)")
        if config.text_encoder.kind == "none" and config.audio_encoder.kind == "none":
            raise ConfigError("the model needs a text_encoder or an audio_encoder (both are 'none')")
        self.config = config
        c = tc.d_model
        self.backbone = Backbone(config.backbone)
        ch = self.backbone.channels
        self.text_encoder = None
        if config.text_encoder.kind == "roberta":
            from mutr.model.text_encoder import TextEncoder

            self.text_encoder = TextEncoder(config.text_encoder, c)
        self.audio_encoder = None
        if config.audio_encoder.kind != "none":
            from mutr.model.audio_encoder import AudioEncoder

            self.audio_encoder = AudioEncoder(config.audio_encoder, c)
        g = tc.input_proj_groups
        self.input_proj = nn.ModuleList(
            [_input_proj(ch[1], c, g), _input_proj(ch[2], c, g), _input_proj(ch[3], c, g),
             _input_proj(ch[3], c, g, kernel=3, stride=2)]
        )
        self.fusion = EarlyFusion(c, config.fusion.nheads)
        self.mta = MTA(c, config.fusion.nheads, config.fusion.mta_ffn)
        self.transformer = DeformableTransformer(tc)
        self.query_embed = nn.Embedding(tc.num_queries, c)
        self.mti = MTI(config.mti, c, tc.num_queries)
        self.heads = PredictionHeads(config.heads, c, tc.dec_layers)
        self.pixel_decoder = CrossModalFPNDecoder(ch[0], c, config.heads.mask_dim, config.fusion)
        self._tokenizer = None
        self._tokenizer_source: str | None = config.text_encoder.tokenizer

    # ------------------------------------------------------------------ references
    def encode_reference(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        audio: Tensor | None = None,
        audio_mask: Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> ReferenceTokens:
        """Encode a text (token ids or raw ``texts``) or audio (log-mel [B, N, 1, 96, 64]) reference.

        Encode once and pass ``reference=`` to every window of a video.
        """
        given = [x is not None for x in (input_ids, audio, texts)]
        if sum(given) != 1:
            raise InputError("pass exactly one reference: text (input_ids or texts) or audio; got "
                             + ("none" if not any(given) else "several"))
        if texts is not None:
            input_ids, attention_mask = self.tokenize(texts)
        if input_ids is not None:
            if self.text_encoder is None:
                raise InputError(f"preset {self.config.name!r} has no text encoder; pass audio instead")
            device = self.query_embed.weight.device
            am = attention_mask.to(device) if attention_mask is not None else None
            return self.text_encoder(input_ids.to(device), am)
        if self.audio_encoder is None:
            raise InputError(f"preset {self.config.name!r} has no audio encoder; pass a text prompt instead")
        return self.audio_encoder(audio, audio_mask)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from mutr.model.text_encoder import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer_source)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Raw strings -> (input_ids, attention_mask) with this model's tokenizer."""
        from mutr.model.text_encoder import tokenize

        if self.text_encoder is None:
            raise InputError(f"preset {self.config.name!r} has no text encoder; pass audio instead")
        return tokenize(self.tokenizer, texts, self.text_encoder.max_length)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        video: Tensor,
        mask: Tensor | None = None,
        *,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        audio: Tensor | None = None,
        audio_mask: Tensor | None = None,
        reference: ReferenceTokens | None = None,
    ) -> MUTROutput:
        """video [B, T, 3, H, W] ImageNet-normalised; mask [B, T, H, W] True on padding."""
        visual = self.encode_video(video, mask)
        if reference is None:
            reference = self.encode_reference(input_ids, attention_mask, audio=audio, audio_mask=audio_mask)
        elif input_ids is not None or audio is not None:
            raise InputError("pass either reference= or input_ids/audio, not both")
        return self.decode(visual, reference)

    def encode_video(self, video: Tensor, mask: Tensor | None = None) -> "VisualFeatures":
        """The reference-independent part: backbone, padding masks, positions, input projections.

        Run it once per window and ``decode`` it with every prompt (early fusion makes everything
        after it prompt-specific).
        """
        b, t, h, w = self._check_video(video, mask)
        if mask is None:
            mask = torch.zeros(b, t, h, w, dtype=torch.bool, device=video.device)
        frames_mask = mask.flatten(0, 1)  # [B*T, H, W]
        dtype = video.dtype
        c = self.config.transformer.d_model
        feats = self.backbone(video.flatten(0, 1), frames=t)  # 4 x [B*T, C_l, h_l, w_l]
        masks = [resize_mask(frames_mask, f.shape[-2:]) for f in feats]
        proj = [self._input_proj(i, feats[i + 1]) for i in range(3)]
        proj.append(self._input_proj(3, feats[3]))
        masks.append(resize_mask(frames_mask, proj[3].shape[-2:]))
        padded = bool(mask.any())
        poses = [_positions(m, c // 2, dtype, padded) for m in masks]
        sizes = torch.stack([(~mask[:, 0, :, 0]).sum(1), (~mask[:, 0, 0, :]).sum(1)], -1)  # [B, (h, w)]
        return VisualFeatures(b, t, feats[0], proj, masks, poses, sizes)

    def decode(self, visual: "VisualFeatures", reference: ReferenceTokens) -> MUTROutput:
        """Everything after the backbone for one reference (batch 1 or B): fusion, MTA,
        transformer, MTI, pixel decoder and heads."""
        b, t = visual.batch_size, visual.num_frames
        if reference.batch_size not in (1, b):
            raise InputError(f"the reference has batch {reference.batch_size} but the video batch is {b}")
        ref = reference.expand(b)
        c = self.config.transformer.d_model
        masks, poses, proj = visual.masks, visual.poses, visual.proj

        # Early fusion per level; MTA reads the same projections *before* fusion (the official code
        # recomputes them; computing once gives identical values).
        srcs = [self._fuse(p, ref, b, t) for p in proj]
        sentence = self.mta(ref, proj, masks[1:], t)  # [B, C]
        q = self.config.transformer.num_queries
        tgt = sentence[:, None, None, :].expand(b, t, q, c).reshape(b * t, q, c)
        box_refine = self.heads.bbox_embed if self.config.heads.with_box_refine else None
        hs, memory, init_ref, refs = self.transformer(srcs, masks[1:], poses[1:], tgt, self.query_embed.weight,
                                                      box_refine)
        levels = hs.shape[0]
        frame_queries = hs.reshape(levels, b, t, q, c)
        # Training runs MTI on every decoder level (aux losses); eval only on the last one, and
        # then the level-0 heads are applied to it, as the released weights expect.
        mti_in = frame_queries if self.training else frame_queries[-1:]
        video_queries = self.mti(mti_in)[:, :, None].expand(-1, b, t, q, c)

        # Inference folds the pixel decoder's last convolution (256 -> 256 channels) into the mask
        # head's first dynamic layer (256 -> Q * 8): the same linear map, ~6x fewer products.
        fold = not self.training and kernels.inference(visual.res2, *self.pixel_decoder.mask_features.parameters())
        mask_feats = self.pixel_decoder(visual.res2, memory, masks[:4], poses[:4], ref, t, project=not fold)
        mask_feats = mask_feats.reshape(b, t, *mask_feats.shape[1:])
        projection = self.pixel_decoder.mask_features if fold else None

        outputs = []
        # The heads are tiny: under autocast they run in float32 (class logits decide which query a
        # video keeps, the dynamic mask weights multiply pixel offsets); only the mask head's
        # product with the mask features stays in the autocast dtype.
        device = video_queries.device.type
        heads_fp32 = kernels.autocast_dtype(device) is not None and kernels.enabled()
        if heads_fp32:
            video_queries, hs = video_queries.float(), hs.float()
            if fold:  # the folded projection's products run in the autocast dtype
                mask_feats = mask_feats.to(kernels.autocast_dtype(device))
        with torch.autocast(device, enabled=False) if heads_fp32 else contextlib.nullcontext():
            for lvl in range(video_queries.shape[0]):
                reference_pts = inverse_sigmoid(init_ref if lvl == 0 else refs[lvl - 1])
                logits = self.heads.class_embed[lvl](video_queries[lvl])
                delta = self.heads.bbox_embed[lvl](hs[lvl])
                if reference_pts.shape[-1] == 4:
                    boxes = (delta + reference_pts).sigmoid()
                else:
                    boxes = torch.cat([delta[..., :2] + reference_pts, delta[..., 2:]], -1).sigmoid()
                ref_xy = refs[lvl, ..., :2].reshape(b, t, q, 2)
                masks_out = self.heads.mask_head(video_queries[lvl], mask_feats, ref_xy, visual.image_sizes,
                                                 projection)
                outputs.append(MUTROutput(logits, boxes.reshape(b, t, q, 4), masks_out))
        final = outputs[-1]
        final.aux_outputs = outputs[:-1] if self.training else []
        return final

    def _input_proj(self, i: int, x: Tensor) -> Tensor:
        conv, norm = self.input_proj[i]
        if kernels.inference(x, conv.weight):
            return norm(kernels.conv2d(x, conv))
        return self.input_proj[i](x)

    def _fuse(self, level: Tensor, ref: ReferenceTokens, b: int, t: int) -> Tensor:
        bt, c, h, w = level.shape
        if kernels.inference(level, *self.fusion.parameters()):
            seq = self.fusion.rows(level, ref, b, t)
        else:
            seq = level.reshape(b, t, c, h * w).permute(1, 3, 0, 2).reshape(t * h * w, b, c)  # [(t h w), b, c]
            seq = self.fusion(seq, ref)
        return seq.reshape(t, h * w, b, c).permute(2, 0, 3, 1).reshape(bt, c, h, w)

    def _check_video(self, video: Tensor, mask: Tensor | None) -> tuple[int, int, int, int]:
        if not isinstance(video, Tensor):
            raise InputError(f"video must be a torch.Tensor [B, T, 3, H, W], got {type(video).__name__}")
        if video.dim() != 5:
            raise InputError(f"video must have shape [B, T, 3, H, W], got {video.dim()} dims {tuple(video.shape)}"
                             "; add batch/time dims with video[None] or video[None, None]")
        b, t, ch, h, w = video.shape
        if ch != 3:
            raise InputError(f"video must have 3 (RGB) channels at dim 2, got {ch}: shape {tuple(video.shape)}")
        if b == 0 or t == 0:
            raise InputError(f"the video is empty (B={b}, T={t}); give at least one frame")
        if min(h, w) < MIN_SIDE:
            raise InputError(f"frames of {h}x{w} are too small; resize them to at least {MIN_SIDE} pixels")
        if not video.is_floating_point():
            raise InputError("video must be a float tensor, ImageNet-normalised (see mutr.io.transforms)")
        if mask is not None and (mask.shape != (b, t, h, w) or mask.dtype != torch.bool):
            raise InputError(f"mask must be a bool tensor [B, T, H, W] = {(b, t, h, w)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        return b, t, h, w

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> "MUTR":
        """Load ``config.json`` + ``model.safetensors`` from a checkpoint directory.

        Registry names are resolved above the model (``mutr.hub.resolve_checkpoint``, which
        ``Predictor.from_pretrained`` and the CLI call), so the model never imports the hub.
        """
        from safetensors.torch import load_file

        path = Path(path_or_name)
        if not path.exists():
            raise CheckpointError(f"checkpoint directory {path} does not exist; for a registry name use "
                                  f"MUTR.from_pretrained(mutr.hub.resolve_checkpoint({str(path_or_name)!r}))")
        config_file, weights = path / "config.json", path / "model.safetensors"
        for f in (config_file, weights):
            if not f.is_file():
                raise CheckpointError(f"{path} is not a mutr checkpoint: {f.name} is missing "
                                      "(official .pth files need `mutr convert FILE OUT_DIR` first)")
        config = MUTRConfig.from_json(config_file)
        # Weights come from the file: never fetch pretrained backbone/text weights here.
        config = replace(config, backbone=replace(config.backbone, pretrained=None),
                         text_encoder=replace(config.text_encoder, pretrained=None))
        model = cls(config)
        try:
            state = load_file(str(weights), device=str(map_location))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {weights}: {exc}; the file is damaged, download it again") from None
        model.load_state_dict_checked(state)
        tokenizer_file = path / "tokenizer.json"
        if tokenizer_file.is_file():
            model._tokenizer_source = str(tokenizer_file)
        model.eval()
        return model

    def load_state_dict_checked(self, state: dict[str, Tensor]) -> None:
        """Strict load whose error lists the missing/unexpected keys and wrong shapes."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            def show(items: list[str]) -> str:
                return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

            parts = [f"{n} {label}: {show(v)}" for label, v, n in
                     (("missing", missing, len(missing)), ("unexpected", unexpected, len(unexpected)),
                      ("with the wrong shape", wrong, len(wrong))) if v]
            raise CheckpointError(f"weights do not fit preset {self.config.name!r}: " + "; ".join(parts)
                                  + "; convert official .pth files with `mutr convert FILE OUT_DIR --preset NAME`")
        self.load_state_dict(state, strict=True)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (each via a temp file and an atomic rename)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in _dedup(self.state_dict()).items()}
        atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        atomic_write(out / "config.json",
                     lambda p: p.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n"))
        return out

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _positions(mask: Tensor, num_feats: int, dtype: torch.dtype, padded: bool) -> Tensor:
    """sine_2d of a padding mask; without padding every frame has the same map, so compute one and
    expand it over the frames (the same values)."""
    if padded or not kernels.enabled():
        return sine_2d(mask, num_feats).to(dtype)
    return sine_2d(mask[:1], num_feats).to(dtype).expand(mask.shape[0], -1, -1, -1)


def _dedup(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Shared heads (no box refine) appear under several keys; safetensors wants each tensor once,
    so aliases are stored as separate copies of the same values (loading re-ties nothing, the
    module structure already shares them)."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out

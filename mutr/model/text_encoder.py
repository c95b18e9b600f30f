"""Text reference: RoBERTa word features resized to C channels (the official FeatureResizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from mutr.config import TextEncoderConfig
from mutr.errors import ConfigError, InputError
from mutr.model.reference import ReferenceTokens


class FeatureResizer(nn.Module):
    """Linear -> LayerNorm(eps 1e-12) -> Dropout, mapping encoder width to d_model."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.layer_norm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))


class TextEncoder(nn.Module):
    """token ids [B, L] -> ReferenceTokens. Token 0 is ``<s>``, MTA's sentence query.

    The RoBERTa pooler is kept (the official checkpoints hold it) but its output is unused, as in
    the official model.
    """

    def __init__(self, config: TextEncoderConfig, d_model: int) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        if config.pretrained:
            self.model = RobertaModel.from_pretrained(config.pretrained)
        else:
            self.model = RobertaModel(RobertaConfig(**config.params))
        self.resizer = FeatureResizer(self.model.config.hidden_size, d_model)
        self.freeze = config.freeze
        self.max_length = config.max_length
        if config.freeze:
            self.model.requires_grad_(False)
        if self.model.pooler is not None:  # its output is never used: keep it out of training
            self.model.pooler.requires_grad_(False)

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> ReferenceTokens:
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [B, L] token ids, got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise InputError("input_ids is empty; pass a non-empty text prompt")
        if int(input_ids.max()) >= self.vocab_size or int(input_ids.min()) < 0:
            raise InputError(
                f"token ids must lie in [0, {self.vocab_size}); got {int(input_ids.min())}..{int(input_ids.max())}"
                " - was the prompt tokenized with this model's tokenizer?"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        words = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        features = self.resizer(words)
        return ReferenceTokens.from_features(features, attention_mask.ne(1))


def load_tokenizer(source: str | Path | None):
    """RoBERTa fast tokenizer from a directory or the local HF cache (never the network)."""
    if source is None:
        raise ConfigError("this model has no tokenizer configured; pass input_ids, or save a tokenizer.json "
                          "beside the checkpoint")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(source)
    try:
        if path.is_file() and path.suffix == ".json":
            return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>",
                                           pad_token="<pad>", unk_token="<unk>")
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the tokenizer {str(source)!r} offline; run `mutr download roberta-base-tokenizer` "
            f"or point text_encoder.tokenizer at a directory with tokenizer.json ({exc.__class__.__name__})"
        ) from None


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Raw strings -> (input_ids, attention_mask), padded to the longest; passed raw, as the official
    inference scripts do (RoBERTa is case-sensitive). Over-long prompts are truncated with a warning."""
    import warnings

    if isinstance(texts, str):
        texts = [texts]
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise InputError("a text prompt is empty; pass a phrase such as --text \"the red car\"")
    full = tokenizer(list(texts), padding="longest", return_tensors="pt")
    if full["input_ids"].shape[1] > max_length:
        warnings.warn(f"a text prompt is longer than {max_length} tokens and was truncated", stacklevel=2)
        full = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length,
                         return_tensors="pt")
    return full["input_ids"], full["attention_mask"]

"""A word-level tokenizer for closed vocabularies (synthetic captions with the tiny presets).

The tiny presets have a 512-word RoBERTa and no pretrained tokenizer. Synthetic captions use a
handful of words (``mutr.data.VOCABULARY``), so a WordLevel tokenizer with RoBERTa's special ids
(``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3) is enough. Saved as ``tokenizer.json`` beside
the exported model, ``MUTR.from_pretrained`` picks it up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def word_tokenizer(vocabulary: Iterable[str]):
    """A ``PreTrainedTokenizerFast`` that splits on whitespace/punctuation, lower-cases, and wraps
    every text as ``<s> words </s>``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for word in sorted({w.lower() for w in vocabulary}):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def synthetic_tokenizer():
    from mutr.data.synthetic import VOCABULARY

    return word_tokenizer(VOCABULARY)


def load_or_build(source: str):
    """``"synthetic"`` builds the synthetic-vocabulary tokenizer; anything else is a tokenizer
    source for ``mutr.model.text_encoder.load_tokenizer`` (a folder, a tokenizer.json, an HF id)."""
    if source == "synthetic":
        return synthetic_tokenizer()
    from mutr.model.text_encoder import load_tokenizer

    return load_tokenizer(source)


def save_tokenizer_json(tokenizer, directory: Path) -> Path | None:
    """Write ``tokenizer.json`` (fast tokenizers only) into ``directory``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    path = Path(directory) / "tokenizer.json"
    backend.save(str(path))
    return path

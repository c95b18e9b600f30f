"""Audio as a reference: the same token type as text, into the same model, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mutr import MUTR, MUTRConfig
from mutr.errors import InputError
from mutr.model.reference import ReferenceTokens
from mutr.model.vggish import waveform_to_examples


@pytest.fixture(scope="module")
def joint() -> MUTR:
    torch.manual_seed(0)
    return MUTR(MUTRConfig.preset("tiny-joint")).eval()


def test_text_and_audio_give_the_same_token_type(joint: MUTR) -> None:
    text = joint.encode_reference(torch.tensor([[0, 5, 6, 2]]))
    audio = joint.encode_reference(audio=torch.randn(1, 5, 1, 96, 64))
    for ref, length in ((text, 4), (audio, 6)):  # audio: sentence token + 5 examples
        assert isinstance(ref, ReferenceTokens)
        assert ref.features.shape == (1, length, 32) and ref.pos.shape == (1, length, 32)
        assert ref.mask.dtype == torch.bool and not ref.mask.any()
    # token 0 of audio = learned token + mean of the example tokens: it follows the sound (MTA
    # turns it into every decoder query)
    enc = joint.audio_encoder
    torch.testing.assert_close(audio.features[:, 0], enc.sentence[:, 0] + audio.features[:, 1:].mean(1))
    other = joint.encode_reference(audio=torch.randn(1, 5, 1, 96, 64))
    assert not torch.allclose(audio.features[:, 0], other.features[:, 0])
    assert not torch.allclose(audio.features[:, 1:], other.features[:, 1:])
    # padded examples do not count in the summary
    sound = torch.cat([torch.randn(1, 5, 1, 96, 64), torch.zeros(1, 2, 1, 96, 64)], 1)
    padded = joint.encode_reference(audio=sound, audio_mask=torch.tensor([[False] * 5 + [True] * 2]))
    torch.testing.assert_close(padded.features[:, 0], enc.sentence[:, 0] + padded.features[:, 1:6].mean(1))


def test_audio_reference_end_to_end_from_a_waveform(joint: MUTR) -> None:
    sr = 16000
    t = np.arange(5 * sr) / sr
    examples = waveform_to_examples(0.3 * np.sin(2 * np.pi * 440 * t), sr)
    assert examples.shape == (5, 96, 64)  # 5 s <-> 5 examples (AVSBench alignment)
    audio = torch.from_numpy(examples)[None, :, None]
    video = torch.randn(1, 5, 3, 64, 64)
    with torch.no_grad():
        out = joint(video, audio=audio)
        padded = joint(video, audio=torch.cat([audio, torch.zeros(1, 2, 1, 96, 64)], 1),
                       audio_mask=torch.tensor([[False] * 5 + [True] * 2]))
    assert out.pred_masks.shape == (1, 5, 5, 16, 16) and torch.isfinite(out.pred_masks).all()
    # padded examples are masked out everywhere they could leak in
    torch.testing.assert_close(padded.pred_masks, out.pred_masks, atol=1e-4, rtol=1e-4)


def test_audio_encoder_trains_when_used(joint: MUTR) -> None:
    model = MUTR(MUTRConfig.preset("tiny-joint")).train()
    out = model(torch.randn(1, 2, 3, 64, 64), audio=torch.randn(1, 2, 1, 96, 64))
    out.pred_masks.mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("audio_encoder.") and p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_bad_audio_input(joint: MUTR) -> None:
    with pytest.raises(InputError, match=r"\[B, N, 1, 96, 64\]"):
        joint(torch.randn(1, 2, 3, 64, 64), audio=torch.randn(1, 2, 96, 64))
    with pytest.raises(InputError, match="exactly one reference"):
        joint(torch.randn(1, 2, 3, 64, 64), input_ids=torch.tensor([[0, 2]]), audio=torch.randn(1, 2, 1, 96, 64))


def test_audio_features_command(tmp_path) -> None:
    import wave

    from mutr_cli.main import app

    sr = 16000
    samples = (0.2 * np.sin(2 * np.pi * 300 * np.arange(3 * sr) / sr) * 32767).astype("<i2")
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(samples.tobytes())
    result = CliRunner().invoke(app, ["audio-features", str(tmp_path / "a.wav"), "--out", str(tmp_path / "x.npy")])
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "x.npy")
    np.testing.assert_array_equal(got, waveform_to_examples(samples.astype(np.float64) / 32768.0, sr))
    again = CliRunner().invoke(app, ["audio-features", str(tmp_path / "a.wav"), "--out", str(tmp_path / "x.npy")])
    assert again.exit_code == 1 and "--overwrite" in again.output

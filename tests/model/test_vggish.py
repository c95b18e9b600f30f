"""mutr.model.vggish against recorded reference outputs (tests/fixtures/vggish, see its README).

The fixture holds outputs of the reference torchvggish front end (+ resampy) and network on
seeded signals and seeded random weights; the signals and weights are regenerated here from
tests/fixtures/vggish/recipes.py.
"""

from __future__ import annotations

import fractions
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mutr.errors import CheckpointError, InputError
from mutr.io.resample import kaiser_best_half_window, resample_kaiser_best
from mutr.model.vggish import (
    VGGish,
    SmallAudioCNN,
    build_audio_encoder,
    convert_state_dict,
    examples_for_span,
    mel_matrix,
    read_weights,
    waveform_to_examples,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vggish"
_spec = importlib.util.spec_from_file_location("vggish_recipes", FIXTURES / "recipes.py")
recipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipes)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def state_dict(ref):
    sd = recipes.make_vggish_state_dict(0)
    check = np.array([float(v.double().sum()) for v in sd.values()])
    assert np.allclose(check, ref["weights_check"]), "torch RNG changed: regenerate the fixture (README)"
    return sd


@pytest.fixture(scope="module")
def net_input(ref):
    return torch.from_numpy(np.concatenate([ref["ex_chirp_16k"], ref["ex_noise_16k"]]))[:, None]


@pytest.fixture(scope="module")
def model(state_dict):
    return VGGish().eval().load_weights(state_dict)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", list(recipes.CASES))
def test_front_end_matches_reference(ref, name):
    x = recipes.make_signal(name)
    check = [x.sum(), np.abs(x).sum(), x.reshape(len(x), -1)[:, 0][:3].sum()]
    assert np.allclose(check, ref[f"check_{name}"], rtol=0, atol=1e-9), "numpy RNG changed: regenerate (README)"
    sr = recipes.CASES[name][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = waveform_to_examples(x, sr)
    expected = ref[f"ex_{name}"]
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    # 16 kHz: bit-identical; resampled: float rounding in resampling (measured ≤ 5e-7)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=0 if sr == 16000 else 2e-6)
    assert bool(caught) == (len(expected) == 0)  # warns exactly when no example fits


def test_mel_matrix_and_resampler_match_reference(ref):
    np.testing.assert_array_equal(mel_matrix(), ref["mel_matrix"])
    np.testing.assert_allclose(kaiser_best_half_window()[::4096], ref["kaiser_table_every_4096"], rtol=0, atol=1e-15)
    for key, sr in recipes.RESAMPLE_CASES.items():
        ours = resample_kaiser_best(recipes.resample_input(sr), sr, 16000)
        np.testing.assert_allclose(ours, ref[f"resampled_{key}"], rtol=0, atol=1e-11)


def test_blocked_front_end_and_input_checks():
    x = recipes.make_signal("chirp_16k")
    np.testing.assert_array_equal(waveform_to_examples(x, 16000, block=1), waveform_to_examples(x, 16000))
    with pytest.raises(InputError, match="channels-first"):
        waveform_to_examples(np.zeros((2, 20000)), 16000)
    with pytest.raises(InputError, match="sample_rate"):
        waveform_to_examples(np.zeros(20000), 0)


def test_network_matches_reference(ref, model, net_input):
    with torch.no_grad():
        torch.testing.assert_close(model(net_input), torch.from_numpy(ref["net_embeddings"]), rtol=0, atol=0)


def test_both_key_layouts_load(state_dict, model):
    torchaudio_sd = convert_state_dict(state_dict, "torchaudio")
    assert all(k.startswith(("features_network.", "embedding_network.")) for k in torchaudio_sd)
    assert convert_state_dict(torchaudio_sd, "torchvggish").keys() == state_dict.keys()
    other = VGGish().load_weights(torchaudio_sd)
    _assert_same_weights(other, model)
    # plain load_state_dict also takes the torchaudio layout, nested inside a bigger model
    wrapper = torch.nn.Module()
    wrapper.audio = other.requires_grad_(False)
    for p in other.parameters():
        p.zero_()
    wrapper.load_state_dict({"audio." + k: v for k, v in torchaudio_sd.items()})
    _assert_same_weights(other, model)


def test_pca_postprocess_matches_reference(ref, model, net_input, tmp_path):
    # torchvggish's PCA file pickles numpy arrays; it must load with weights_only=True
    torch.save({"pca_eigen_vectors": ref["pca_eigen_vectors"], "pca_means": ref["pca_means"]}, tmp_path / "pca.pth")
    try:
        model.load_weights(model.state_dict(), pca=tmp_path / "pca.pth")
        with torch.no_grad():
            out = model(net_input)
        assert out.shape == (3, 128)  # the reference squeezes the batch dim; we keep it
        torch.testing.assert_close(out, torch.from_numpy(ref["net_postprocessed"]), rtol=0, atol=0)
        saved = model.state_dict()  # a state dict of the model carries its PCA ...
        model.postprocess = None
        model.load_weights(saved)  # ... and loading it restores postprocessing
        assert torch.equal(model.postprocess.pca_eigen_vectors, torch.from_numpy(ref["pca_eigen_vectors"]))
    finally:
        model.postprocess = None


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_bad_weights_name_the_problem(state_dict, tmp_path):
    with torch.device("meta"):
        model = VGGish()
    partial = {k: v for k, v in state_dict.items() if not k.startswith("embeddings.4")}
    with pytest.raises(CheckpointError, match=r"missing \['embeddings.4.bias', 'embeddings.4.weight'\]"):
        model.load_weights(partial)
    with pytest.raises(CheckpointError, match="shapes"):
        model.load_weights({**state_dict, "features.0.weight": torch.zeros(64, 1, 5, 5)})
    with pytest.raises(CheckpointError, match="pca_eigen_vectors"):
        model.load_weights(state_dict, pca={"means": torch.zeros(128)})
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "missing.pth")
    torch.save({"x": 1, "f": len}, tmp_path / "pickle.pth")  # not a plain state dict: refused
    with pytest.raises(CheckpointError, match="cannot read"):
        read_weights(tmp_path / "pickle.pth")


def test_frozen_by_default_and_without_final_relu():
    with torch.device("meta"):
        frozen, trainable = build_audio_encoder("vggish"), build_audio_encoder("vggish", frozen=False)
        pre = VGGish(final_relu=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    assert sum(p.numel() for p in frozen.parameters()) == 72_141_184
    assert len(pre.embeddings) == 5 and pre.state_dict().keys() == frozen.state_dict().keys()
    with pytest.raises(InputError, match=r"\[M, 1, 96, 64\]"):
        frozen(torch.zeros(2, 96, 64, device="meta"))


def test_small_audio_cnn(tmp_path):
    model = build_audio_encoder("small")
    assert isinstance(model, SmallAudioCNN)
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 100_000
    x = torch.randn(5, 1, 96, 64)
    y = model(x)
    assert y.shape == (5, 128) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # pitch is kept, time is pooled: moving a tone burst to another mel band changes the embedding
    # far more than moving it in time (a globally pooled CNN treats both moves alike)
    torch.manual_seed(0)
    fresh = build_audio_encoder("small")
    x = torch.full((3, 1, 96, 64), -4.6)
    x[0, 0, 20:40, 10], x[1, 0, 50:70, 10], x[2, 0, 20:40, 40] = 3.0, 3.0, 3.0
    with torch.no_grad():
        e = fresh(x)
    moved_in_time, moved_in_pitch = (e[0] - e[1]).norm(), (e[0] - e[2]).norm()
    assert moved_in_pitch > 8 * moved_in_time, (moved_in_pitch, moved_in_time)  # 16.9 here; global pool: 2-6
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "small.safetensors")
    again = build_audio_encoder("small", weights=tmp_path / "small.safetensors")
    _assert_same_weights(again, model)
    with pytest.raises(InputError, match="unknown audio encoder"):
        build_audio_encoder("yamnet")


def _write_wav(path: Path, ints: np.ndarray, rate: int) -> None:
    """ints [N] or [N, C] int16 → a 16-bit WAV."""
    import av

    ints = ints.reshape(len(ints), -1)
    layout = "mono" if ints.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(ints.reshape(1, -1)), format="s16", layout=layout)
        frame.sample_rate, frame.time_base, frame.pts = rate, fractions.Fraction(1, rate), 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_examples_from_media_files(ref, tmp_path):
    # a 16-bit WAV of the int16 recipe gives the reference's examples bit for bit
    x = recipes.make_signal("int16_16k")
    _write_wav(tmp_path / "a.wav", np.round(x * 32768).astype(np.int16), 16000)
    examples, t0 = examples_for_span(tmp_path / "a.wav")
    assert t0 == 0.0
    np.testing.assert_array_equal(examples, ref["ex_int16_16k"])
    # a 44.1 kHz stereo WAV, cut to a span: as the reference's wavfile_to_examples on that clip
    rng = np.random.default_rng(0)
    ints = (rng.random((44100 * 3, 2)) * 20000 - 10000).astype(np.int16)
    _write_wav(tmp_path / "b.wav", ints, 44100)
    examples, t0 = examples_for_span(tmp_path / "b.wav", 0.5, 2.5)
    clip = ints[22050 : 22050 + 88200] / 32768.0
    assert t0 == pytest.approx(0.5) and examples.shape == (2, 96, 64)
    np.testing.assert_allclose(examples, waveform_to_examples(clip, 44100), rtol=0, atol=1e-5)

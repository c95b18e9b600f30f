"""VGGish: the log-mel front end and the audio CNN that turn a sound into 128-d embeddings.

The released VGGish weights only give meaningful embeddings for inputs computed exactly as the
reference (tensorflow/models ``vggish_input.py`` + ``mel_features.py``) computes them, so the
front end follows it step by step in float64 (datasets.md §4.1): mean over channels, resampy
``kaiser_best`` resampling to 16 kHz, 25 ms periodic-Hann frames every 10 ms without padding,
|rfft| of length 512, an HTK mel matrix whose triangles are linear in *mel* (torchaudio's
``melscale_fbanks`` draws them linear in Hz and differs by up to 4e-3), log(mel + 0.01), and
non-overlapping 0.96 s examples.

Shapes: M examples, each [96 frames (10 ms), 64 mel bands]; the network reads [M, 1, 96, 64].
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from mutr.errors import CheckpointError, InputError
from mutr.io.resample import resample_kaiser_best

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT_LENGTH = 512  # next power of two >= WINDOW
NUM_BANDS = 64
NUM_FRAMES = 96  # frames per example (0.96 s)
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_SAMPLES = HOP * (NUM_FRAMES - 1) + WINDOW  # 15600: the samples one example reads
EXAMPLE_HOP_SAMPLES = HOP * NUM_FRAMES  # 15360: examples start every 0.96 s
EMBEDDING_SIZE = 128


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale with VGGish's constants (1127, 700), not torchaudio's 2595·log10."""
    return 1127.0 * np.log(1.0 + (np.asarray(hz, dtype=np.float64) / 700.0))


@lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """[257, 64] float64: spectrogram bins → mel bands, triangles linear in mel, DC row zero."""
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2.0, FFT_LENGTH // 2 + 1))[:, None]
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


@lru_cache(maxsize=1)
def periodic_hann() -> np.ndarray:
    """[400]: one full cosine period (no repeated end point), as VGGish uses."""
    return 0.5 - (0.5 * np.cos(2 * np.pi / WINDOW * np.arange(WINDOW)))


def log_mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """16 kHz mono [N] → [F, 64] float64 with F = 1 + (N - 400) // 160 (0 if N < 400)."""
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < WINDOW:
        return np.zeros((0, NUM_BANDS))
    frames = np.lib.stride_tricks.sliding_window_view(samples, WINDOW)[::HOP]  # [F, 400]
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann(), FFT_LENGTH))  # [F, 257]
    return np.log(np.dot(magnitude, mel_matrix()) + LOG_OFFSET)


def num_examples(num_samples: int) -> int:
    """Complete 0.96 s examples in ``num_samples`` 16 kHz samples (< 15,600 samples gives 0)."""
    return 0 if num_samples < EXAMPLE_SAMPLES else 1 + (num_samples - EXAMPLE_SAMPLES) // EXAMPLE_HOP_SAMPLES


def waveform_to_examples(waveform: np.ndarray, sample_rate: int, *, block: int = 64) -> np.ndarray:
    """Audio → VGGish examples [M, 96, 64] float32, as the reference ``waveform_to_examples``.

    ``waveform`` is [N] or [N, C] (samples first, as soundfile returns; channels are averaged).
    Examples are computed ``block`` at a time so a long track needs little memory. Differences
    from the reference: returns no tensor/grad, and audio too short for one example gives [0, 96,
    64] with a warning (the reference crashes below 240 samples).
    """
    x = np.asarray(waveform)
    if x.ndim == 2:
        if x.shape[0] < x.shape[1]:
            raise InputError(f"waveform of shape {x.shape} looks channels-first; pass it as [samples, "
                             "channels] (waveform.T)")
        x = x.mean(axis=1, dtype=np.float64)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"waveform must be a numeric [N] or [N, C] array, got {x.dtype} {x.shape}")
    if sample_rate <= 0:
        raise InputError(f"sample_rate must be positive, got {sample_rate}")
    x = x.astype(np.float64, copy=False)
    if sample_rate != SAMPLE_RATE:
        x = resample_kaiser_best(x, int(sample_rate), SAMPLE_RATE)
    count = num_examples(len(x))
    if count == 0:
        warnings.warn(f"audio of {len(x)} samples at 16 kHz is shorter than one VGGish example "
                      f"({EXAMPLE_SAMPLES} samples, 0.975 s) and gives none; pass a longer clip", stacklevel=2)
    out = np.empty((count, NUM_FRAMES, NUM_BANDS), dtype=np.float32)
    for b in range(0, count, block):
        n = min(block, count - b)
        lo = b * EXAMPLE_HOP_SAMPLES
        mel = log_mel_spectrogram(x[lo : lo + (n - 1) * EXAMPLE_HOP_SAMPLES + EXAMPLE_SAMPLES])
        out[b : b + n] = mel.reshape(n, NUM_FRAMES, NUM_BANDS)  # [n * 96, 64] → [n, 96, 64]
    return out


def examples_for_span(source: str | os.PathLike, start: float | None = None, end: float | None = None
                      ) -> tuple[np.ndarray, float]:
    """VGGish examples of the audio in [start, end) of a media file, and the span's start time.

    The span is treated as a clip of its own (the way AVSBench cut 5 s clips before computing
    features): decoded at the source rate, then :func:`waveform_to_examples`. Only the span is
    decoded, so windows of a long video are cheap.
    """
    from mutr.io.audio import load_audio

    samples, rate, start_time = load_audio(source, start, end, sample_rate=None)
    return waveform_to_examples(samples, rate), start_time


# --- network ---------------------------------------------------------------------------------

_TORCHAUDIO_PREFIXES = {"features_network.": "features.", "embedding_network.": "embeddings."}


def convert_state_dict(state_dict: Mapping[str, Tensor], layout: Literal["torchvggish", "torchaudio"]
                       ) -> dict[str, Tensor]:
    """Rename keys between the two published layouts (torchvggish ``features.*``/``embeddings.*``
    and torchaudio ``features_network.*``/``embedding_network.*``); other keys pass through."""
    if layout not in ("torchvggish", "torchaudio"):
        raise InputError(f"unknown layout {layout!r}; pass 'torchvggish' or 'torchaudio'")
    pairs = _TORCHAUDIO_PREFIXES.items() if layout == "torchvggish" else \
        [(b, a) for a, b in _TORCHAUDIO_PREFIXES.items()]
    out = {}
    for key, value in state_dict.items():
        for old, new in pairs:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from ``.safetensors``, ``.npz`` (e.g. vggish_pca_params.npz) or a torch file
    read with ``weights_only=True`` (numpy arrays allowed, as the torchvggish PCA file holds)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist; pass the path of a VGGish weight file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(data[k]) for k in data.files}
        with torch.serialization.safe_globals(_numpy_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read weights from {path} ({e}); pass a .safetensors, .npz or "
                              "torch state-dict file") from e
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict; save model.state_dict()")
    return {k: torch.as_tensor(v) for k, v in data.items()}


def _numpy_globals() -> list:
    """Numpy names a plain pickled array needs (under numpy 1 and 2 module names); no code runs."""
    multiarray = getattr(np, "_core", None) or np.core
    rebuild = multiarray.multiarray._reconstruct
    dtypes = [getattr(np.dtypes, n) for n in ("Float32DType", "Float64DType")] if hasattr(np, "dtypes") else []
    return [(rebuild, "numpy.core.multiarray._reconstruct"), (rebuild, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *dtypes]


class VGGishPostprocess(nn.Module):
    """PCA + whitening, clip to [-2, 2], 8-bit quantisation: the format of AudioSet's released
    embeddings. Output values are floats in 0..255 (the batch dimension is kept)."""

    def __init__(self, eigen_vectors: Tensor | None = None, means: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pca_eigen_vectors", torch.zeros(EMBEDDING_SIZE, EMBEDDING_SIZE))
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_SIZE))
        if eigen_vectors is not None and means is not None:
            self.pca_eigen_vectors.copy_(torch.as_tensor(eigen_vectors).float())
            self.pca_means.copy_(torch.as_tensor(means).float().reshape(-1))

    def forward(self, x: Tensor) -> Tensor:
        """[M, 128] → [M, 128]."""
        pca = torch.mm(self.pca_eigen_vectors, x.t() - self.pca_means[:, None]).t()
        return torch.round((torch.clamp(pca, -2.0, 2.0) + 2.0) * (255.0 / 4.0))


class VGGish(nn.Module):
    """VGG-A-like CNN: log-mel examples [M, 1, 96, 64] → embeddings [M, 128].

    ``final_relu=True`` matches the torch ports (torchvggish, torchaudio, AVSBench); the TF model's
    embedding is pre-activation (``final_relu=False``). Frozen by default: the published weights
    are used as a fixed feature extractor. Plain ``load_state_dict`` accepts both key layouts.
    """

    def __init__(self, *, final_relu: bool = True, postprocess: VGGishPostprocess | None = None,
                 frozen: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):  # same indices as both layouts
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Linear(512 * 6 * 4, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                 nn.ReLU(True), nn.Linear(4096, EMBEDDING_SIZE)]
        self.embeddings = nn.Sequential(*head, *([nn.ReLU(True)] if final_relu else []))
        self.postprocess = postprocess
        self.register_load_state_dict_pre_hook(_accept_torchaudio_keys)
        if frozen:
            self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """x [M, 1, 96, 64] log-mel → [M, 128] (postprocessed if a postprocess module is set)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, NUM_FRAMES, NUM_BANDS):
            raise InputError(f"VGGish expects log-mel examples [M, 1, 96, 64], got {tuple(x.shape)}; "
                             "add the channel dim with x[:, None]")
        x = self.features(x)  # [M, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten in TF's NHWC order → [M, 12288]
        x = self.embeddings(x)
        return x if self.postprocess is None else self.postprocess(x)

    def load_weights(self, weights: str | os.PathLike | Mapping[str, Tensor],
                     pca: str | os.PathLike | Mapping[str, Tensor] | None = None) -> "VGGish":
        """Load network weights (either layout) strictly, and PCA parameters if given (this sets
        up postprocessing). Raises CheckpointError naming missing/unexpected keys."""
        sd = convert_state_dict(read_weights(weights) if not isinstance(weights, Mapping) else weights,
                                "torchvggish")
        net = {k: v for k, v in sd.items() if not k.startswith("postprocess.")}
        if pca is None and len(net) < len(sd):  # a state dict of this class carries its PCA
            pca = {k.removeprefix("postprocess."): v for k, v in sd.items() if k.startswith("postprocess.")}
        missing, unexpected = _diff_keys(self, net)
        if missing or unexpected:
            raise CheckpointError(f"VGGish weights do not match: missing {missing}, unexpected {unexpected}; "
                                  "pass a torchvggish or torchaudio VGGish state dict")
        try:
            self.load_state_dict(net, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"VGGish weight shapes do not match ({e}); pass a VGGish state dict") from e
        if pca is not None:
            p = read_weights(pca) if not isinstance(pca, Mapping) else pca
            if "pca_eigen_vectors" not in p or "pca_means" not in p:
                raise CheckpointError(f"PCA parameters need keys pca_eigen_vectors and pca_means, got "
                                      f"{sorted(p)}; pass vggish_pca_params")
            device = self.embeddings[0].weight.device
            self.postprocess = VGGishPostprocess(p["pca_eigen_vectors"], p["pca_means"]).to(device)
        return self


def _accept_torchaudio_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: rename torchaudio keys in place, also inside a bigger model."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _TORCHAUDIO_PREFIXES.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


def _diff_keys(model: VGGish, sd: Mapping[str, Tensor]) -> tuple[list[str], list[str]]:
    own = {k for k in model.state_dict() if not k.startswith("postprocess.")}
    return sorted(own - set(sd)), sorted(set(sd) - own)


class SmallAudioCNN(nn.Module):
    """An ~80k-parameter stand-in for VGGish with the same interface ([M, 1, 96, 64] → [M, dim]),
    for tests and tiny models that must run in seconds on a CPU.

    Like VGGish (whose fully connected layers see every mel band), it keeps *where* in frequency
    the energy is: the convolutions are pooled over time only and the 16 remaining mel bands are
    flattened into the projection. (A global average pool, the obvious small design, makes the
    embedding the same for every pitch: a tiny-joint model trained with one could not tell which
    object sounded.)"""

    def __init__(self, width: int = 16, dim: int = EMBEDDING_SIZE, *, frozen: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # 48 × 32
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # 24 × 16
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 16)),  # time pooled away, 16 mel bands kept: [M, 2w, 1, 16]
        )
        self.proj = nn.Linear(2 * width * 16, dim)
        if frozen:
            self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """x [M, 1, 96, 64] → [M, dim]."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise InputError(f"expected log-mel examples [M, 1, 96, 64], got {tuple(x.shape)}")
        return self.proj(self.features(x).flatten(1))


def build_audio_encoder(kind: Literal["vggish", "small"] = "vggish", *,
                        weights: str | os.PathLike | Mapping[str, Tensor] | None = None,
                        pca: str | os.PathLike | Mapping[str, Tensor] | None = None,
                        final_relu: bool = True, frozen: bool | None = None) -> nn.Module:
    """Audio encoder, log-mel examples [M, 1, 96, 64] → [M, 128]. ``frozen`` defaults to True for
    VGGish (a fixed pretrained extractor, as in AVSBench) and False for the small CNN."""
    if kind == "vggish":
        model = VGGish(final_relu=final_relu, frozen=True if frozen is None else frozen)
        if weights is not None or pca is not None:
            if weights is None:
                raise InputError("pca given without weights; pass weights= the VGGish state dict too")
            model.load_weights(weights, pca)
        return model
    if kind == "small":
        if pca is not None:
            raise InputError("pca applies to VGGish only; drop pca= or use kind='vggish'")
        small = SmallAudioCNN(frozen=bool(frozen))
        if weights is not None:
            sd = read_weights(weights) if not isinstance(weights, Mapping) else weights
            try:
                small.load_state_dict(sd)
            except RuntimeError as e:
                raise CheckpointError(f"SmallAudioCNN weights do not match ({e}); pass its own state dict") from e
        return small
    raise InputError(f"unknown audio encoder {kind!r}; pass 'vggish' or 'small'")

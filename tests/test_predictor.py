"""mutr.Predictor: streamed windows, window linking, shared backbone passes, the official clip protocol.

Tiny random-weight models on 96x64 videos with the model input at 64 pixels, so each test runs
in about a second on two CPU cores.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_utils import make_audio, make_checkpoint, make_video
from torch import nn

from mutr import MUTR, Predictor
from mutr.audio_windows import AudioWindows, example_indices
from mutr.errors import ConfigError, InputError, MediaError
from mutr.io.transforms import preprocess
from mutr.io.video import open_source
from mutr.model.mutr import MUTROutput, VisualFeatures
from mutr.model.reference import ReferenceTokens
from mutr.model.vggish import waveform_to_examples
from mutr.postprocess import link_query, mask_agreement, predict_clip

SIZE = 64  # model input short side: 96x64 frames -> 96x64 input, 24x16 mask logits


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small gain nothing from a second thread, and on a busy machine OpenMP's
    spinning threads make them ~10x slower; restore the suite's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("predictor")
    out = {"tiny": make_checkpoint(d / "tiny", "tiny"), "joint": make_checkpoint(d / "joint", "tiny-joint", seed=1)}
    out["frames"] = make_video(d / "v.mp4", n=12, audio="aac")
    out["mp4"] = d / "v.mp4"
    make_video(d / "short_audio.mp4", n=16, audio="aac", audio_seconds=0.2)
    out["short_audio"] = d / "short_audio.mp4"
    make_video(d / "silent.mp4", n=6, audio="aac", silent=True)
    out["silent"] = d / "silent.mp4"
    make_video(d / "mute.mp4", n=6)
    out["mute"] = d / "mute.mp4"
    out["wav"] = make_audio(d / "tone.wav", 3.0)
    return out


@pytest.fixture(scope="module")
def tiny(files) -> Predictor:
    return Predictor(MUTR.from_pretrained(files["tiny"]), device="cpu")


@pytest.fixture(scope="module")
def joint(files) -> Predictor:
    return Predictor(MUTR.from_pretrained(files["joint"]), device="cpu")


def test_segment_yields_every_frame_with_masks_scores_boxes(tiny, files):
    run = tiny.segment(files["mp4"], texts=["the red square", "blue circle"], size=SIZE, window=6,
                       return_probs=True)
    assert run.total == 12 and run.prompts == ["the red square", "blue circle"]
    results = list(run)
    assert [r.index for r in results] == list(range(12))
    assert [r.time for r in results] == pytest.approx([i / 25 for i in range(12)])
    assert [r.window for r in results] == [0] * 6 + [1] * 5 + [2]  # 6 frames, then 5 new (overlap 6 // 4 = 1)
    for r in results:
        assert r.masks.shape == (2, 64, 96) and r.masks.dtype == bool
        assert r.probs.shape == (2, 64, 96) and r.probs.dtype == np.float32
        assert np.array_equal(r.masks, r.probs > 0.5)
        assert r.scores.shape == (2,) and ((r.scores > 0) & (r.scores < 1)).all()
        assert r.boxes.shape == (2, 4) and np.allclose(r.boxes_xyxy[:, 2:] - r.boxes_xyxy[:, :2], r.boxes[:, 2:])
        assert r.image.shape == (64, 96, 3)
        assert len(r.queries) == 2


def test_stride_start_end_keep_true_indices(tiny, files):
    results = list(tiny.segment(files["mp4"], texts=["the red square"], size=SIZE, stride=3, start=0.1, end=0.45))
    assert [r.index for r in results] == [3, 6, 9]
    assert [r.time for r in results] == pytest.approx([0.12, 0.24, 0.36])


def test_results_arrive_before_the_video_is_decoded(tiny, files):
    source = open_source(files["mp4"])
    decoded = []
    iterate = source.iter_frames

    def counting(include_skipped: bool = False):
        for frame in iterate(include_skipped):
            decoded.append(frame.index)
            yield frame

    source.iter_frames = counting
    run = tiny.segment(source, texts=["the red square"], size=SIZE, window=4, overlap=1, prefetch=0)
    assert decoded == []  # nothing decoded before the first result is asked for
    first = next(run)
    assert first.index == 0 and len(decoded) == 4  # exactly one window was read
    run.close()

    # the background decoder runs at most `prefetch` frames (+ the one it is handing over) ahead
    decoded.clear()
    run = tiny.segment(source, texts=["the red square"], size=SIZE, window=4, overlap=1, prefetch=2)
    first = next(run)
    time.sleep(0.3)  # let the decoder fill its queue
    assert first.index == 0 and 4 + 2 <= len(decoded) <= 4 + 2 + 1 < 12
    rest = [r.index for r in run]
    assert rest == list(range(1, 12)) and decoded == list(range(12))
    assert run.times.input > 0 and run.times.model > 0


def test_background_decoding_gives_the_same_results(tiny, files):
    inline = list(tiny.segment(files["mp4"], texts=["the red square"], size=SIZE, window=4, prefetch=0))
    background = list(tiny.segment(files["mp4"], texts=["the red square"], size=SIZE, window=4, prefetch=3))
    assert [r.index for r in inline] == [r.index for r in background] == list(range(12))
    for a, b in zip(inline, background):
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.boxes, b.boxes)


def test_background_decoder_errors_reach_the_caller_and_close_stops_it(files):
    from mutr.io.prefetch import Prefetch

    def broken():
        yield 1
        raise MediaError("frame 2 is damaged")

    items = Prefetch(broken(), size=1)
    assert next(items) == 1
    with pytest.raises(MediaError, match="frame 2 is damaged"):
        next(items)
    endless = Prefetch(iter(range(10**9)), size=2)
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    endless.close()
    assert not endless._thread.is_alive() and list(endless) == []


def test_one_backbone_pass_per_window_serves_every_prompt(tiny, files):
    model = tiny.model
    calls = {"encode": [], "decode": 0}
    encode, decode = model.encode_video, model.decode

    def counting_encode(video, mask=None):
        calls["encode"].append(video.shape[1])
        return encode(video, mask)

    def counting_decode(visual, reference):
        calls["decode"] += 1
        return decode(visual, reference)

    model.encode_video, model.decode = counting_encode, counting_decode
    try:
        results = list(tiny.segment(files["mp4"], texts=["red", "blue", "the ball"], size=SIZE, window=6,
                                    overlap=2))
    finally:
        del model.encode_video, model.decode
    assert len(results) == 12
    assert calls["encode"] == [6, 4, 2]  # 3 windows; the 2 shared frames are not encoded again
    assert calls["decode"] == 3 * 3  # every prompt decodes every window


def _official_postprocess(outputs: MUTROutput, origin_h: int, origin_w: int) -> tuple[torch.Tensor, int]:
    """inference_ytvos.py / inference_davis.py, as in architecture.md §14 (batch 1)."""
    pred_logits = outputs.pred_logits[0]  # [t, q, k]
    pred_masks = outputs.pred_masks[0]  # [t, q, h, w]
    pred_scores = pred_logits.sigmoid()
    pred_scores = pred_scores.mean(0)  # [q, k]
    max_scores, _ = pred_scores.max(-1)  # [q,]
    _, max_ind = max_scores.max(-1)
    max_inds = max_ind.repeat(pred_masks.shape[0])
    pred_masks = pred_masks[range(pred_masks.shape[0]), max_inds, ...]  # [t, h, w]
    pred_masks = pred_masks.unsqueeze(0)
    pred_masks = F.interpolate(pred_masks, size=(origin_h, origin_w), mode="bilinear", align_corners=False)
    return pred_masks.sigmoid()[0], int(max_ind)


def test_predict_clip_is_the_official_protocol_exactly(tiny, files):
    model = tiny.model
    frames = files["frames"][:7]
    got = predict_clip(model, frames, text="the red square", size=SIZE)
    with torch.no_grad():
        ids, am = model.tokenize(["the red square"])
        out = model(preprocess(frames, SIZE)[None], input_ids=ids, attention_mask=am)
    probs, query = _official_postprocess(out, 64, 96)
    assert got.query == query
    assert torch.equal(got.probs, probs)
    assert torch.equal(got.masks, probs > 0.5)
    # the predictor's method runs the same thing on its device/precision
    assert torch.equal(tiny.predict_clip(frames, text="the red square", size=SIZE).probs, probs)


def test_one_window_streaming_equals_predict_clip(tiny, files):
    frames = [f.image for f in open_source(files["mp4"])]  # as decoded (4:2:0), not as generated
    clip = predict_clip(tiny.model, frames, text="blue circle", size=SIZE)
    results = list(tiny.segment(files["mp4"], texts=["blue circle"], size=SIZE, window=12, return_probs=True))
    probs = np.stack([r.probs[0] for r in results])
    assert np.allclose(probs, clip.probs.numpy(), atol=1e-6)
    assert {r.queries[0] for r in results} == {clip.query}


# ---------------------------------------------------------------------------------- window linking


class ScriptedModel(nn.Module):
    """A stand-in for MUTR whose outputs the test controls.

    Two objects: A fills the left third of every frame, B the right third. ``script(frames)``
    gives, for the frames of a window, the score of A and of B and the query slots they occupy.
    encode_video numbers the frames it sees (each frame passes once), so decode knows which
    frames its window holds.
    """

    def __init__(self, script) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.script, self.seen = script, 0
        self.text_encoder, self.audio_encoder = object(), None

    def encode_reference(self, texts=None, **_) -> ReferenceTokens:
        return ReferenceTokens.from_features(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.bool))

    def encode_video(self, video, mask=None) -> VisualFeatures:
        t = video.shape[1]
        ids = torch.arange(self.seen, self.seen + t, dtype=torch.float32).view(t, 1, 1, 1)
        self.seen += t
        per_frame = [ids.clone() for _ in range(4)]
        return VisualFeatures(1, t, ids, per_frame, [ids[:, 0].bool()] * 5, per_frame + [ids], torch.tensor([[64, 96]]))

    def decode(self, visual, reference) -> MUTROutput:
        frames = [int(x) for x in visual.res2.flatten()]
        t, q, h, w = len(frames), 5, 16, 24
        (score_a, slot_a), (score_b, slot_b) = self.script(frames)
        logits = torch.full((1, t, q, 1), -6.0)
        masks = torch.full((1, t, q, h, w), -10.0)
        logits[..., slot_a, 0], logits[..., slot_b, 0] = torch.logit(torch.tensor([score_a, score_b]))
        masks[0, :, slot_a, :, :8] = 10.0  # A: left third
        masks[0, :, slot_b, :, 16:] = 10.0  # B: right third
        return MUTROutput(logits, torch.full((1, t, q, 4), 0.5), masks)


def _left(results) -> list[bool]:
    return [bool(r.masks[0][:, :30].all() and not r.masks[0][:, 40:].any()) for r in results]


def test_linking_keeps_the_object_when_another_query_outscores_it(files):
    # window 0 (frames 0-5): A 0.9 in slot 0, B 0.3 in slot 1. Later windows: B outscores A,
    # and the slots swap, so only the masks can tell which query continues A.
    def script(frames):
        return ((0.9, 0), (0.3, 1)) if frames[-1] < 6 else ((0.6, 3), (0.8, 0))

    linked = list(Predictor(ScriptedModel(script)).segment(files["mp4"], ["x"], size=SIZE, window=6, overlap=2))
    assert len(linked) == 12 and all(_left(linked)), "the object chosen first must stay chosen"
    assert [r.queries[0] for r in linked] == [0] * 6 + [3] * 6
    assert linked[-1].scores[0] == pytest.approx(0.6)
    # without an overlap each window decides alone and jumps to B: the case above is a real one
    alone = list(Predictor(ScriptedModel(script)).segment(files["mp4"], ["x"], size=SIZE, window=6, overlap=0))
    assert _left(alone) == [True] * 6 + [False] * 6


def test_linking_drops_a_weak_choice_for_a_confident_one(files):
    # window 0: only a weak candidate A (0.2); later the referred object B appears at 0.95
    def script(frames):
        return ((0.2, 0), (0.05, 1)) if frames[-1] < 6 else ((0.2, 0), (0.95, 1))

    results = list(Predictor(ScriptedModel(script)).segment(files["mp4"], ["x"], size=SIZE, window=6, overlap=2))
    assert _left(results) == [True] * 6 + [False] * 6


def test_link_rule_pieces():
    prev = torch.zeros(2, 4, 4, dtype=torch.bool)
    prev[:, :2] = True
    cands = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    cands[:, 0, :2] = True  # same
    cands[:, 1, :1] = True  # half
    agreement = mask_agreement(prev, cands)
    assert agreement.tolist() == pytest.approx([1.0, 0.5, 0.0])
    scores = torch.tensor([0.5, 0.6, 0.95])
    assert link_query(scores, None, None) == 2
    assert link_query(scores, agreement, 0.8) == 0  # 0.5 + 0.8 beats 0.95
    assert link_query(scores, agreement, 0.1) == 2
    assert mask_agreement(torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 2, 2, dtype=torch.bool)).sum() == 0


# ---------------------------------------------------------------------------------- audio


def test_example_indices_match_avsbench_and_never_empty():
    assert example_indices(0.0, 5.0) == [0, 1, 2, 3, 4]  # AVSBench: 5 frames at 1 fps <-> 5 examples
    assert example_indices(1.0, 2.0) == [1]
    assert example_indices(0.64, 1.28) == [1]  # no centre inside: the example around the middle
    assert example_indices(0.0, 0.2) == [0]


def test_audio_windows_match_the_reference_front_end(files):
    import av

    with av.open(str(files["wav"])) as c:
        wave = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)]).astype(np.float64) / 32768
    reference = waveform_to_examples(wave, 16000)  # [3, 96, 64]
    windows = AudioWindows(files["wav"])
    got = np.concatenate([windows.examples(0.0, 1.0), windows.examples(0.8, 2.0), windows.examples(2.0, 2.9)])
    assert got.shape == (3, 96, 64)
    assert np.allclose(got, reference, atol=1e-4)


def test_audio_prompt_from_the_video(joint, files):
    run = joint.segment(files["mp4"], texts=["the red square"], audio="from-video", size=SIZE, window=8)
    assert run.prompts == ["the red square", "audio of the video"]
    results = list(run)
    assert len(results) == 12 and results[0].masks.shape == (2, 64, 96)


def test_audio_file_prompt_and_short_audio_warns(joint, files):
    results = list(joint.segment(files["mp4"], audio=files["wav"], size=SIZE, window=12))
    assert len(results) == 12 and results[0].masks.shape == (1, 64, 96)
    with pytest.warns(UserWarning, match="padded with silence"):
        list(joint.segment(files["short_audio"], audio="from-video", size=SIZE, window=16))


def test_silent_audio_works_and_warns(joint, files):
    with pytest.warns(UserWarning, match="silent"):
        results = list(joint.segment(files["silent"], audio="from-video", size=SIZE))
    assert len(results) == 6


def test_audio_from_a_video_without_sound_is_refused(joint, files):
    with pytest.raises(MediaError, match="mute.mp4 has no audio stream; pass --audio FILE or --text"):
        joint.segment(files["mute"], audio="from-video")


# ---------------------------------------------------------------------------------- options


def test_bad_options_raise_before_decoding(tiny, files):
    with pytest.raises(InputError, match="nothing to segment"):
        tiny.segment(files["mp4"])
    with pytest.raises(InputError, match="window"):
        tiny.segment(files["mp4"], ["x"], window=0)
    with pytest.raises(InputError, match="overlap"):
        tiny.segment(files["mp4"], ["x"], window=4, overlap=4)
    with pytest.raises(InputError, match="empty"):
        tiny.segment(files["mp4"], [" "])
    with pytest.raises(InputError, match="takes no sound"):
        tiny.segment(files["mp4"], audio="from-video")
    with pytest.raises(ConfigError, match="precision"):
        Predictor(tiny.model, device="cpu", precision="fp8")


def test_long_text_is_truncated_with_a_warning(tiny, files):
    with pytest.warns(UserWarning, match="truncated"):
        run = tiny.segment(files["mp4"], ["red " * 100], size=SIZE, end=0.1)
    assert len(list(run)) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_a_gpu(tiny):
    with pytest.raises(ConfigError, match="--device cpu"):
        Predictor(tiny.model, device="cuda")


def test_bf16_autocast_runs(files):
    predictor = Predictor(MUTR.from_pretrained(files["tiny"]), device="cpu", precision="bf16", threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = list(predictor.segment(files["mp4"], ["red"], size=SIZE, end=0.12))
    assert len(results) == 3 and results[0].masks.dtype == bool and np.isfinite(results[0].scores).all()


@pytest.mark.cuda
def test_cuda_matches_cpu(files):
    cpu = predict_clip(MUTR.from_pretrained(files["tiny"]), files["frames"][:6], text="red", size=SIZE)
    gpu = Predictor(MUTR.from_pretrained(files["tiny"]), device="cuda").predict_clip(files["frames"][:6], text="red",
                                                                                      size=SIZE)
    assert gpu.query == cpu.query and torch.allclose(gpu.probs, cpu.probs, atol=1e-3)


def test_temporal_backbone_window_equals_one_forward_over_its_frames(tmp_path):
    """Video-Swin mixes the frames of its clip, so the predictor re-encodes the shared frames:
    each window's outputs are one plain forward over exactly that window's frames. Reusing the
    shared frames' features from the previous window (what per-frame backbones do) differs."""
    from dataclasses import replace

    from segment_utils import make_tokenizer_json

    from mutr import MUTRConfig
    from mutr.config import BackboneConfig
    from mutr.io.transforms import resize_short_side, to_model_input
    from mutr.predictor import _cat_visual, _tail_visual

    swin = BackboneConfig("video_swin", dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2]))
    torch.manual_seed(0)
    MUTR(replace(MUTRConfig.preset("tiny"), name="tiny-video-swin", backbone=swin)).save_pretrained(tmp_path / "m")
    make_tokenizer_json(tmp_path / "m" / "tokenizer.json")
    model = MUTR.from_pretrained(tmp_path / "m").eval()
    assert model.backbone.temporal
    images = make_video(tmp_path / "v.mp4", n=10)
    seen = {"encode": [], "decode": []}
    encode, decode = model.encode_video, model.decode
    model.encode_video = lambda video, mask=None: seen["encode"].append(video) or encode(video, mask)
    model.decode = lambda visual, ref: seen["decode"].append(out := decode(visual, ref)) or out
    try:
        results = list(Predictor(model, device="cpu").segment(tmp_path / "v.mp4", texts=["red"], size=SIZE,
                                                              window=6, overlap=2))
    finally:
        del model.encode_video, model.decode
    assert [r.window for r in results] == [0] * 6 + [1] * 4
    assert [v.shape[1] for v in seen["encode"]] == [6, 6]  # the 2 shared frames are encoded again
    frames = to_model_input([resize_short_side(im, SIZE) for im in images])  # [10, 3, 64, 96]
    # window 1 is frames 4..9 (the decoded frames differ from the written ones by chroma subsampling)
    distance = (seen["encode"][1][0, :, None] - frames[None]).abs().mean((2, 3, 4))  # [6, 10]
    assert distance.argmin(1).tolist() == [4, 5, 6, 7, 8, 9]
    assert torch.equal(seen["encode"][1][0, :2], seen["encode"][0][0, 4:])
    with torch.no_grad():
        ref = model.encode_reference(texts=["red"])
        second = seen["encode"][1]  # [1, 6, 3, h, w]: frames 4..9 as the predictor decoded them
        whole = model(second, reference=ref)  # one official forward over the window's frames
        for name in ("pred_logits", "pred_boxes", "pred_masks"):
            torch.testing.assert_close(getattr(seen["decode"][1], name), getattr(whole, name), atol=1e-5, rtol=1e-5)
        reused = _cat_visual(_tail_visual(model.encode_video(seen["encode"][0]), 2),
                             model.encode_video(second[:, 2:]))
        stale = model.decode(reused, ref).pred_masks
    assert (stale - whole.pred_masks).abs().max() > 1e-2  # reusing per-frame features would be wrong

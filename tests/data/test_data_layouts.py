"""Every synthetic layout reads back through its dataset class with exactly the GT it was made from."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mutr.data import (ANNOTATOR_SETS, AVSBench, AVSBenchEval, RefDavis, RefDavisEval, RefYouTubeVOS,
                       RefYouTubeVOSEval, SyntheticDataset, VOCABULARY, plain_transforms, write_synthetic)
from mutr.data.synthetic import SAMPLE_RATE, make_clip, video_name
from mutr.model.vggish import waveform_to_examples


def _video_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def test_ytvos_training_samples_have_exact_masks_and_boxes(synthetic_roots):
    root = synthetic_roots("ytvos")
    ds = RefYouTubeVOS(root, transforms=plain_transforms(), num_frames=5)
    assert len(ds) == sum(2 * len(synthetic_roots.clip("ytvos", "train", i).objects) * 2 for i in range(3))
    for index in (0, 5, len(ds) - 1):
        meta, s = ds.metas[index], ds[index]
        clip = synthetic_roots.clip("ytvos", "train", _video_index(meta.video))
        idx = s.target["frames_idx"].numpy()
        gt = clip.mask(meta.obj_id)[idx]
        assert torch.equal(s.target["masks"], torch.from_numpy(gt))
        assert torch.equal(s.target["valid"], torch.from_numpy(gt.reshape(len(idx), -1).any(1)))
        assert s.caption in [c.lower() for c in clip.objects[meta.obj_id - 1].captions[:2]]
        h, w = gt.shape[1:]
        for t in np.flatnonzero(gt.reshape(len(idx), -1).any(1)):
            ys, xs = np.nonzero(gt[t])
            cx, cy = (xs.min() + xs.max()) / 2 / w, (ys.min() + ys.max()) / 2 / h
            expect = torch.tensor([cx, cy, (xs.max() - xs.min()) / w, (ys.max() - ys.min()) / h])
            torch.testing.assert_close(s.target["boxes"][t], expect.float())
        assert s.frames.shape == (5, 3, h, w) and s.target["has_gt"].all()


def test_ytvos_valid_excludes_test_videos_and_keeps_case(synthetic_roots):
    ev = RefYouTubeVOSEval(synthetic_roots("ytvos"))
    assert [v.video_id for v in ev] == [video_name("valid", 0), video_name("valid", 1)]  # the last is "test"
    v = ev[1]
    clip = synthetic_roots.clip("ytvos", "valid", 1)
    assert list(v.expressions.values()) == [c for o in clip.objects for c in o.captions[:2]]
    assert v.frame_names == tuple(f"{5 * t:05d}" for t in range(synthetic_roots.num_frames))
    frames = v.load_frames()
    assert len(frames) == synthetic_roots.num_frames and frames[0].size == (80, 48)


def test_davis_eval_gives_label_maps_and_four_annotator_sets(synthetic_roots):
    ev = RefDavisEval(synthetic_roots("davis"))
    assert len(ev) == 3
    for i, v in enumerate(ev):
        clip = synthetic_roots.clip("davis", "valid", i)
        np.testing.assert_array_equal(v.load_gt(), clip.ids)
        assert [o.obj_id for o in v.objects] == [o.obj_id for o in clip.objects]
        for a in range(len(ANNOTATOR_SETS)):
            assert v.expressions_of_set(a) == [(o.obj_id, o.captions[a]) for o in clip.objects]
        assert v.objects[1].exp_ids == ("4", "5", "6", "7")


def test_davis_training_reads_both_splits(synthetic_roots):
    ds = RefDavis(synthetic_roots("davis"), "valid", transforms=plain_transforms())
    meta, s = ds.metas[3], ds[3]
    clip = synthetic_roots.clip("davis", "valid", _video_index(meta.video))
    assert torch.equal(s.target["masks"], torch.from_numpy(clip.mask(meta.obj_id)[s.target["frames_idx"].numpy()]))


@pytest.mark.parametrize("layout", ["avsbench-s4", "avsbench-ms3"])
def test_avsbench_eval_clips_are_exact_and_audio_sources_agree(synthetic_roots, layout):
    subset = layout.split("-")[1]
    root = synthetic_roots(layout)
    pkl, wav = AVSBenchEval(root, subset, "test"), AVSBenchEval(root, subset, "test", audio="wav")
    assert len(pkl) == 3
    for i in range(3):
        clip, a, b = synthetic_roots.clip(layout, "test", i), pkl[i], wav[i]
        np.testing.assert_array_equal(a.masks, clip.mask(clip.sounding))
        assert a.has_gt.all() and a.audio.shape == (5, 1, 96, 64) and a.audio.dtype == torch.float32
        assert torch.equal(a.audio, b.audio)  # pickle made from the stored wav, bit for bit
        np.testing.assert_array_equal(np.asarray(a.frames[2]), clip.frames[2])  # PNG frames are lossless
        if subset == "s4":
            assert a.category == clip.objects[clip.sounding[0] - 1].name and len(clip.sounding) == 1


def test_avsbench_s4_training_has_gt_on_first_frame_only(synthetic_roots):
    ds = AVSBench(synthetic_roots("avsbench-s4"), "s4", "train")
    s = ds[1]
    clip = synthetic_roots.clip("avsbench-s4", "train", 1)
    assert s.target["has_gt"].tolist() == [True, False, False, False, False]
    assert torch.equal(s.target["masks"][0], torch.from_numpy(clip.mask(clip.sounding)[0]))
    assert not s.target["masks"][1:].any() and not s.target["valid"][1:].any()
    assert s.audio.shape == (5, 1, 96, 64) and not s.audio_mask.any() and s.caption is None
    ms3 = AVSBench(synthetic_roots("avsbench-ms3"), "ms3", "train", audio="wav")[0]
    assert ms3.target["has_gt"].all()


def test_avsbench_accepts_the_subset_folder_as_root(synthetic_roots):
    root = synthetic_roots("avsbench-ms3") / "Multi-sources"
    assert len(AVSBenchEval(root, "ms3", "val")) == 3


def test_audio_tone_identifies_the_sounding_object():
    clip = make_clip([7, 1], num_frames=5, size=32, num_objects=3, sounding="one")
    wave = clip.waveform(1.0)
    spectrum = np.abs(np.fft.rfft(wave))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(wave)
    assert abs(peak_hz - clip.objects[clip.sounding[0] - 1].frequency) <= 1.0
    assert len({o.frequency for o in clip.objects}) == 3
    assert waveform_to_examples(clip.waveform(5.0), SAMPLE_RATE).shape == (5, 96, 64)


def test_clips_are_deterministic_and_captions_use_the_vocabulary():
    a, b = make_clip([1, 2], num_frames=4, size=(32, 48)), make_clip([1, 2], num_frames=4, size=(32, 48))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.ids, b.ids) and a.objects == b.objects
    for seed in range(20):
        clip = make_clip(seed, num_frames=2, size=32)
        assert 2 <= len(clip.objects) <= 3
        assert len({o.colour for o in clip.objects}) == len(clip.objects)
        assert {w for o in clip.objects for c in o.captions for w in c.split()} <= set(VOCABULARY)
        assert clip.objects[0].side == "left" and clip.objects[-1].side == "right"
        for o in clip.objects:  # every object is drawn on frame 0 with its own colour
            assert (clip.ids[0] == o.obj_id).any()


def test_writing_a_small_dataset_is_fast(tmp_path):
    start = time.perf_counter()
    for layout in ("ytvos", "davis", "avsbench-s4", "avsbench-ms3"):
        write_synthetic(layout, tmp_path / layout, num_videos=2, num_frames=6, size=(48, 64), seed=0)
    assert time.perf_counter() - start < 2.0


def test_in_memory_dataset_yields_both_reference_kinds():
    text = SyntheticDataset("text", num_videos=3, num_frames=4, size=(32, 48), seed=1)
    s = text[(2, 11)]
    clip = text.clip(2)
    obj = int(s.source.rsplit("/", 1)[1])
    assert s.caption in clip.objects[obj - 1].captions
    assert torch.equal(s.target["masks"], torch.from_numpy(clip.mask(obj)))
    audio = SyntheticDataset("audio", num_videos=3, num_frames=4, size=(32, 48), seed=1)[0]
    assert audio.audio.shape == (4, 1, 96, 64) and audio.caption is None
    assert torch.equal(text[(2, 11)].frames, s.frames)


def test_short_audio_repeats_its_last_example_to_five(tmp_path):
    from mutr.data.avsbench import load_audio_examples
    from mutr.data.synthetic_layouts import _write_wav

    clip = make_clip([0], num_frames=5, size=24)
    _write_wav(clip.waveform(3.0), tmp_path / "short.wav")  # 3 s → 3 VGGish examples
    x = load_audio_examples(tmp_path / "short.wav", "wav", "test")
    assert x.shape == (5, 1, 96, 64)
    assert torch.equal(x[3], x[2]) and torch.equal(x[4], x[2]) and not torch.equal(x[1], x[2])


def test_avsbench_training_with_the_augmentation_recipe(synthetic_roots):
    from mutr.data import train_transforms

    t = train_transforms(scales=(32, 48), max_size=64, crop_scales=(48,), crop_range=(32, 40))
    ds = AVSBench(synthetic_roots("avsbench-ms3"), "ms3", "val", transforms=t)
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert torch.equal(a.frames, b.frames) and torch.equal(a.target["masks"], b.target["masks"])
    assert a.frames.shape[-2:] == a.target["masks"].shape[-2:] and min(a.frames.shape[-2:]) in (32, 48)

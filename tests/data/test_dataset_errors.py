"""Missing or misplaced files give one line naming the expected path and the layout."""

from __future__ import annotations

import shutil

import pytest

from mutr.data import AVSBench, AVSBenchEval, RefDavisEval, RefYouTubeVOS, RefYouTubeVOSEval, plain_transforms
from mutr.data.synthetic import write_synthetic
from mutr.errors import InputError, MutrError


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and isinstance(error.value, MutrError)
    return text


def test_missing_root_pieces_are_named(tmp_path):
    with pytest.raises(InputError) as e:
        RefYouTubeVOS(tmp_path)
    assert str(tmp_path / "train" / "JPEGImages") in _one_line(e) and "Ref-YouTube-VOS" in str(e.value)
    with pytest.raises(InputError) as e:
        RefDavisEval(tmp_path)
    assert "meta_expressions.json" in _one_line(e) and "Ref-DAVIS17" in str(e.value)
    with pytest.raises(InputError) as e:
        AVSBenchEval(tmp_path, "s4")
    assert str(tmp_path / "Single-source" / "s4_meta_data.csv") in _one_line(e) and "AVSBench S4" in str(e.value)


def test_missing_frame_or_annotation_names_the_file(tmp_path):
    root = write_synthetic("ytvos", tmp_path, num_videos=1, num_frames=3, size=32, seed=0, splits=["train"])
    frame = next((root / "train" / "JPEGImages").rglob("00000.jpg"))  # the anchor of sample 0
    frame.unlink()
    ds = RefYouTubeVOS(root, transforms=plain_transforms(), num_frames=3)
    with pytest.raises(InputError) as e:
        ds[0]
    assert str(frame) in _one_line(e) and "<root>/<split>/JPEGImages/<video>/<frame>.jpg" in str(e.value)
    with pytest.raises(InputError) as e:
        RefYouTubeVOSEval(root)
    assert "valid" in _one_line(e)


def test_avsbench_missing_audio_and_wrong_split(tmp_path):
    root = write_synthetic("avsbench-ms3", tmp_path, num_videos=1, size=24, seed=0, splits=["val"])
    pkl = next((root / "Multi-sources" / "ms3_data" / "audio_log_mel").rglob("*.pkl"))
    pkl.unlink()
    with pytest.raises(InputError) as e:
        AVSBenchEval(root, "ms3", "val")[0]
    assert str(pkl) in _one_line(e) and "AVSBench MS3" in str(e.value)
    assert AVSBenchEval(root, "ms3", "val", audio="wav")[0].audio.shape == (5, 1, 96, 64)
    with pytest.raises(InputError, match="no videos in split 'train'; choose one of val"):
        AVSBench(root, "ms3", "train")
    with pytest.raises(InputError, match="'log_mel'"):
        AVSBench(root, "ms3", "val", audio="mp3")


def test_misplaced_s4_mask_is_named(tmp_path):
    root = write_synthetic("avsbench-s4", tmp_path, num_videos=1, size=24, seed=0, splits=["test"])
    masks = root / "Single-source" / "s4_data" / "gt_masks"
    video = next(masks.rglob("*_3.png"))
    shutil.move(video, masks / video.name)  # moved out of <split>/<category>/<name>/
    with pytest.raises(InputError) as e:
        AVSBenchEval(root, "s4", "test")[0]
    assert str(video) in _one_line(e)


def test_wrong_split_or_unknown_layout(tmp_path):
    with pytest.raises(InputError, match="only for split"):
        RefYouTubeVOS(tmp_path, "valid")
    with pytest.raises(InputError, match="unknown synthetic layout"):
        write_synthetic("coco", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no split 'val'"):
        write_synthetic("ytvos", tmp_path, splits=["val"])

"""`mutr segment` on damaged media: the seeded corpus of tests/damaged_media.py (6 container/codec
pairs x 6 damages), each run with a text and the video's own sound as prompts.

Expected values come from libavcodec itself (damaged_media.libavcodec_decode: plain PyAV with
FFmpeg's default per-packet error handling): a run succeeds with a warning whenever the video and
the sound decode at all, else it fails with the one-line error; the overlay holds every decodable
frame and at least the decodable sound of its span; the warning and --json count the audio
packets that libavcodec cannot decode.
"""

from __future__ import annotations

import json
import re

import pytest
from damaged_media import DAMAGES, PAIRS, damage, libavcodec_decode, make_clip
from segment_utils import make_checkpoint
from typer.testing import CliRunner

from mutr_cli.main import app

runner = CliRunner()
FAST = ["--size", "64", "--threads", "1", "--stride", "4", "--format", "overlay", "--json"]
SOUND_SLACK_S = 0.07  # the overlay's sound may start one codec frame late (an MP4 edit list or
#                      AAC's encoder delay) and is cut at the end of the last video frame



@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("MUTR_DEMO_CHECKPOINT", str(tmp_path / "no-demo-here"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return d, make_checkpoint(d / "joint", "tiny-joint"), {p: make_clip(d, p, seconds=0.8) for p in PAIRS}


def _overlay(path):
    """(frame count, seconds of sound that decode, with libavcodec's per-packet error handling)."""
    got = libavcodec_decode(path)
    return len(got.video_times), got.audio_seconds()


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("pair", list(PAIRS))
def test_damaged_media_succeed_with_a_warning_or_fail_in_one_line(corpus, tmp_path, pair, kind):
    d, joint, clean = corpus
    bad = damage(clean[pair], kind, tmp_path / f"{pair}-{kind}{clean[pair].suffix}")
    ref = libavcodec_decode(bad.path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(bad.path), "-t", "red", "--audio-from-video", "-c", str(joint),
                                 "-o", str(out), *FAST])
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    if result.exit_code != 0:
        assert result.exit_code == 1 and result.stderr.startswith("error:"), result.output
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == "", result.output
        assert not out.exists()  # never a partial output
        assert ref is None or not ref.video_times or not ref.audio, "only when nothing decodes"
        if ref is not None and ref.video_times:  # the video decodes: a text prompt alone still works
            text = runner.invoke(app, ["segment", str(bad.path), "-t", "red", "-c", str(joint), "-o", str(out), *FAST])
            assert text.exit_code == 0, text.output
        return
    assert ref.video_times and ref.audio
    summary = json.loads(result.stdout)
    frames, sound = _overlay(out / "overlay.mp4")
    assert frames == summary["input_frames"] == len(ref.video_times)  # every decodable frame
    first = ref.video_times[0]
    span_end = ref.video_times[-1] + 1 / 25  # the clips are 25 fps
    assert sound >= ref.audio_seconds(first, span_end) - SOUND_SLACK_S, (sound, ref.audio_seconds(first, span_end))
    [(path, counts)] = summary["audio_damage"].items()
    assert path == str(bad.path)
    assert counts["skipped_packets"] == ref.audio_skipped  # the packets libavcodec cannot decode
    warned = re.findall(r"skipped (\d+) damaged audio packets? of", result.stderr)
    assert warned == ([str(ref.audio_skipped)] if ref.audio_skipped else [])  # one warning, the same count


def test_a_track_of_which_nothing_decodes(corpus, tmp_path):
    """Every audio packet damaged, the video intact: the sound prompt is the one-line error, a
    text prompt still works and its overlay (AC-3 is transcoded) has no sound, with one warning."""
    from damaged_media import packets_of

    d, joint, clean = corpus
    data = bytearray(clean["avi-ac3"].read_bytes())
    for p in packets_of(clean["avi-ac3"]):
        if p.kind == "audio":
            data[p.offset : p.offset + p.size] = bytes(p.size)
    path = tmp_path / "mute.avi"
    path.write_bytes(bytes(data))
    sound = runner.invoke(app, ["segment", str(path), "--audio-from-video", "-c", str(joint), "-o", str(tmp_path / "a"),
                                *FAST])
    assert sound.exit_code == 1 and not (tmp_path / "a").exists()
    assert re.fullmatch(r"error: cannot decode the audio of mute\.avi after 0\.00 s of decoding \(.+\); re-encode "
                        r"it, e\.g\. ffmpeg -i IN -c:a flac OUT\.flac\n", sound.stderr), sound.stderr
    text = runner.invoke(app, ["segment", str(path), "-t", "red", "-c", str(joint), "-o", str(tmp_path / "t"), *FAST])
    assert text.exit_code == 0, text.output
    assert [line for line in text.stderr.splitlines() if "mute.avi" in line] == [
        next(line for line in text.stderr.splitlines() if line.startswith("warning: the overlay has no sound: no packet"))]
    frames, seconds = _overlay(tmp_path / "t" / "overlay.mp4")
    assert frames == 20 and seconds == 0
    assert json.loads(text.stdout)["audio_damage"][str(path)]["skipped_packets"] > 0

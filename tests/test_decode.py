"""Decode stage: crop choice, frame-rate resampling by timestamp, audio alignment and length."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar3d.core.dataset import SAMPLES_PER_FRAME
from avatar3d.preprocess.decode import (
    aligned_audio,
    choose_crop,
    crop_resize,
    num_output_frames,
    resample_by_time,
    timeline_duration,
)
from avatar3d.core.video import MediaInfo, VideoWriter, probe, read_frames_at


def _plan(times, n_out, fps=25, t0=0.0):
    """Output index -> chosen input index."""
    pairs = list(resample_by_time(((t, k) for k, t in enumerate(times)), n_out, fps, t0))
    assert [i for i, _ in pairs] == list(range(n_out))
    return np.array([k for _, k in pairs])


def test_resample_same_rate_is_identity():
    times = np.arange(100) / 25
    np.testing.assert_array_equal(_plan(times, 100), np.arange(100))


def test_resample_30_to_25_picks_nearest_source_frame():
    times = np.arange(300) / 30  # 10 s at 30 fps
    plan = _plan(times, 250)
    # nearest 30 fps frame to i / 25 s is round(i * 30 / 25) (ties go to the earlier frame)
    expected = np.floor(np.arange(250) * 30 / 25 + 0.5 - 1e-9).astype(int)
    np.testing.assert_array_equal(plan, expected)
    assert len(np.unique(plan)) == 250  # 30 -> 25 only drops frames, never repeats
    assert np.all(np.diff(plan) >= 1) and np.all(np.diff(plan) <= 2)


def test_resample_50_to_25_and_12_to_25():
    np.testing.assert_array_equal(_plan(np.arange(100) / 50, 50), np.arange(0, 100, 2))
    plan = _plan(np.arange(24) / 12, 50)  # upsampling repeats frames
    assert plan[0] == 0 and plan[-1] == 23
    assert np.all(np.bincount(plan) >= 2)


def test_resample_offset_start_and_hold_past_end():
    # the video starts 0.08 s after the timeline (as in the Macron clip): early frames take the first
    times = 0.08 + np.arange(30) / 30
    plan = _plan(times, 30, t0=0.0)
    np.testing.assert_array_equal(plan[:3], [0, 0, 0])
    assert plan[-1] == 29  # 1.16 s > last input at 1.047 s: held
    assert plan[-2] == 29


def test_resample_streams_with_bounded_memory():
    seen = []

    def gen():
        for k in range(1000):
            seen.append(k)
            yield k / 30, k

    out = resample_by_time(gen(), 5, 25)
    first = next(out)
    assert first == (0, 0) and len(seen) <= 2  # pulled lazily, not the whole clip


def test_num_output_frames():
    assert num_output_frames(20.0) == 500
    assert num_output_frames(50.426) == 1261
    assert num_output_frames(71.184) == 1780


def _info(**kw) -> MediaInfo:
    base = dict(
        path=Path("x.mp4"), has_video=True, has_audio=True, fps=30.0, width=512, height=512,
        num_frames=1510, duration=50.426, audio_rate=48000, start=0.0, video_start=0.08,
        video_duration=50.333, audio_start=0.0, audio_duration=50.426,
    )
    base.update(kw)
    return MediaInfo(**base)


def test_timeline_duration_keeps_short_audio_tail_and_drops_long_one():
    assert timeline_duration(_info()) == pytest.approx(50.426)
    # audio runs 10 s past the video: the timeline ends with the video
    info = _info(duration=60.413, audio_duration=60.413)
    assert timeline_duration(info) == pytest.approx(50.413)


def test_choose_crop_centres_head_and_shoulders():
    # face 100 px tall centred at (960, 400) in a 1920x1080 frame
    boxes = np.array([[910, 350, 1010, 450]] * 5, float)
    x0, y0, side = choose_crop(boxes, 1920, 1080, scale=3.0)
    assert side == 300
    assert x0 + side / 2 == pytest.approx(960, abs=1)  # centred horizontally on the face
    assert y0 + side / 2 == pytest.approx(415, abs=1)  # below the face centre: shoulders
    assert y0 <= 350 and y0 + side >= 450  # the whole face is inside


def test_choose_crop_covers_motion_and_clamps_inside_frame():
    boxes = np.array([[10, 20, 110, 120], [40, 20, 140, 120]], float)  # face moves 30 px
    x0, y0, side = choose_crop(boxes, 1280, 720, scale=3.0)
    assert side == 330
    assert x0 == 0 and y0 == 0  # clamped at the top-left corner
    assert x0 + side <= 1280 and y0 + side <= 720


def test_choose_crop_frame_too_small_takes_largest_square():
    boxes = np.array([[100, 60, 250, 220]], float)  # big face in a 400x300 frame
    x0, y0, side = choose_crop(boxes, 400, 300, scale=3.0)
    assert side == 300 and y0 == 0
    assert 0 <= x0 <= 100
    assert x0 <= 100 and x0 + side >= 250  # face still inside horizontally


def test_crop_resize_shapes():
    frame = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    out = crop_resize(frame, (50, 0, 300), 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    same = crop_resize(frame, (50, 0, 300), 300)
    np.testing.assert_array_equal(same, frame[:, 50:350])


def _write_clip(path: Path, seconds: float, fps: int, click_at: float, audio_rate: int = 16000) -> None:
    n = int(round(seconds * fps))
    audio = np.zeros(int(seconds * audio_rate), np.float32)
    k = int(click_at * audio_rate)
    audio[k : k + 80] = 0.9
    with VideoWriter(path, 64, 48, fps=fps, audio=audio, audio_rate=audio_rate) as w:
        for i in range(n):
            w.write(np.full((48, 64, 3), (i * 7) % 256, np.uint8))


def test_aligned_audio_length_and_sync(tmp_path):
    path = tmp_path / "click.mp4"
    _write_clip(path, 3.0, 30, click_at=1.0, audio_rate=22050)
    info = probe(path)
    n = num_output_frames(timeline_duration(info))
    assert n == 75
    audio = aligned_audio(path, info, n)
    assert audio.shape == (n * SAMPLES_PER_FRAME,) and audio.dtype == np.float32
    onset = int(np.argmax(np.abs(audio) > 0.3))
    assert abs(onset - 16000) <= 160  # within 10 ms of 1.0 s
    # shorter requested length: exactly frames * 640, truncated
    assert aligned_audio(path, info, 40).shape == (40 * SAMPLES_PER_FRAME,)


def test_read_frames_at_seeks_to_the_shown_frame(tmp_path):
    path = tmp_path / "ramp.mp4"
    _write_clip(path, 3.0, 25, click_at=0.5)
    got = read_frames_at(path, [0.0, 1.0, 2.5])
    assert [round(t * 25) for t, _ in got] == [0, 25, 62]
    for (t, frame), idx in zip(got, [0, 25, 62]):
        assert abs(float(frame.mean()) - (idx * 7) % 256) < 4


def test_decode_crops_the_head_out_of_a_wide_frame(shared_data, tmp_path):
    """The 450x450 Obama clip pasted at (760, 180) into a 1280x720 30 fps canvas: decode finds
    the face, crops one square around head and shoulders, resamples to 25 fps at --size."""
    from avatar3d.core.dataset import DatasetPaths
    from avatar3d.models import face_landmarker_path
    from avatar3d.preprocess.decode import DecodeConfig, run_decode
    from avatar3d.core.video import iter_frames, read_audio

    src = shared_data / "obama_adnerf_crop_edtalk_20s_450.mp4"
    wide = tmp_path / "wide.mp4"
    frames = iter_frames(src)
    canvas = np.full((720, 1280, 3), 40, np.uint8)
    with VideoWriter(wide, 1280, 720, fps=30, audio=read_audio(src, 16000)[: 3 * 16000]) as w:
        for _ in range(90):
            canvas[180:630, 760:1210] = next(frames)
            w.write(canvas)
    frames.close()
    out = DatasetPaths(tmp_path / "data")
    out.root.mkdir()
    result = run_decode(wide, out, 128, DecodeConfig(), face_landmarker_path())
    x0, y0, side = result.crop
    assert result.num_frames == 75
    assert 400 <= side <= 600  # head and shoulders (2.2 face heights), not the whole frame
    assert abs(x0 + side / 2 - 985) < 40  # centred on the pasted clip
    assert 100 <= y0 <= 200 and y0 + side <= 720
    info = probe(out.frames)
    assert (info.width, info.height, info.fps, info.num_frames) == (128, 128, 25, 75)
    import soundfile as sf

    audio, rate = sf.read(str(out.audio), dtype="int16")
    assert rate == 16000 and len(audio) == 75 * SAMPLES_PER_FRAME

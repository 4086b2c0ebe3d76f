"""`avatar3d preprocess` end to end: caching, resume after a crash, --force, atomic output, and the
numbers on the real 20 s Obama clip."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avatar3d.core.dataset import SAMPLES_PER_FRAME, TRACK_KEYS, DatasetPaths, load_tracks, read_manifest
from avatar3d.fsutil import sha256_file
from avatar3d.fsutil import work_dir_for
from avatar3d.preprocess import audio_features, background, contact_sheet, decode, parse, pose, track
from avatar3d.preprocess.pipeline import PreprocessConfig, run_preprocess
from avatar3d.preprocess.pose import PoseConfig
from avatar3d.core.video import VideoWriter, iter_frames, probe, read_audio

OBAMA = "obama_adnerf_crop_edtalk_20s_450.mp4"
STAGES = ("decode", "track", "pose", "parse", "background", "audio_features", "contact_sheet")
# (module, function) of every stage, to count how often each runs
STAGE_FUNCS = {
    "decode": (decode, "run_decode"),
    "track": (track, "run_track"),
    "pose": (pose, "run_pose"),
    "parse": (parse, "run_parse"),
    "background": (background, "run_background"),
    "audio_features": (audio_features, "run_audio_features"),
    "contact_sheet": (contact_sheet, "make_contact_sheet"),
}


@pytest.fixture(scope="module")
def short_clip(shared_data, tmp_path_factory) -> Path:
    """The first 3 s of the Obama clip, re-encoded with its sound (made at test time, in tmp)."""
    src = shared_data / OBAMA
    path = tmp_path_factory.mktemp("clip") / "obama3s.mp4"
    audio = read_audio(src, 16000)[: 3 * 16000]
    frames = iter_frames(src)
    with VideoWriter(path, 450, 450, fps=25, audio=audio) as w:
        for _ in range(75):
            w.write(next(frames))
    frames.close()
    return path


def _config(src: Path, out: Path, **kw) -> PreprocessConfig:
    return PreprocessConfig(video=src, output=out, size=128, **kw)


@pytest.fixture(scope="module")
def built(short_clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "data"
    run_preprocess(_config(short_clip, out))
    return out


@pytest.fixture
def counts(monkeypatch) -> dict[str, int]:
    """How often each stage function runs in this test."""
    calls = {name: 0 for name in STAGE_FUNCS}
    for name, (module, attr) in STAGE_FUNCS.items():
        original = getattr(module, attr)

        def counted(*args, _name=name, _f=original, **kw):
            calls[_name] += 1
            return _f(*args, **kw)

        monkeypatch.setattr(module, attr, counted)
    return calls


def _check_complete(out: Path) -> dict:
    manifest = read_manifest(out)
    assert tuple(manifest.stages) == STAGES
    assert not work_dir_for(out).exists()
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(manifest.files) == [f for f in files if f != "manifest.json"]
    for rel, digest in manifest.files.items():
        assert sha256_file(out / rel) == digest, rel
    return json.loads(DatasetPaths(out).report.read_text())


def test_build_writes_a_complete_dataset(built, short_clip):
    report = _check_complete(built)
    manifest = read_manifest(built)
    assert manifest.num_frames == 75 and manifest.size == 128 and manifest.fps == 25
    assert manifest.source_sha256 == sha256_file(short_clip)
    assert manifest.split == {"train": (0, 67), "val": (67, 75)}
    tracks = load_tracks(built)
    assert set(TRACK_KEYS) <= set(tracks)
    assert tracks["landmarks"].shape == (75, 478, 3) and tracks["R"].shape == (75, 3, 3)
    info = probe(DatasetPaths(built).frames)
    assert (info.width, info.height, info.fps) == (128, 128, 25)
    assert report["frames"] == 75 and report["tracked_fraction"] >= 0.99
    assert set(report["timings_s"]) == set(STAGES)
    assert report["dataset_bytes"] > 0


def test_rerun_is_up_to_date(built, short_clip, tmp_path, counts, capsys):
    out = tmp_path / "data"
    shutil.copytree(built, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    run_preprocess(_config(short_clip, out))
    assert "up to date" in capsys.readouterr().out
    assert sum(counts.values()) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_force_redoes_every_stage(built, short_clip, tmp_path, counts):
    out = tmp_path / "data"
    shutil.copytree(built, out)
    run_preprocess(_config(short_clip, out, force=True))
    assert counts == {name: 1 for name in STAGES}
    _check_complete(out)


def test_changed_option_redoes_that_stage_and_later_ones(built, short_clip, tmp_path, counts):
    out = tmp_path / "data"
    shutil.copytree(built, out)
    run_preprocess(_config(short_clip, out, pose=PoseConfig(smooth_weight=3.0)))
    assert counts == {name: int(STAGES.index(name) >= STAGES.index("pose")) for name in STAGES}
    _check_complete(out)


def test_crash_leaves_no_dataset_and_rerun_resumes(short_clip, tmp_path, monkeypatch, counts):
    out = tmp_path / "data"

    def crash(*args, **kw):
        raise RuntimeError("simulated crash in parse")

    with monkeypatch.context() as m:
        m.setattr(parse, "run_parse", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_preprocess(_config(short_clip, out))
    assert not out.exists()  # nothing half-written at DATA_DIR
    partial = work_dir_for(out)
    assert set(read_manifest(partial).stages) == {"decode", "track", "pose"}
    for name in counts:
        counts[name] = 0
    run_preprocess(_config(short_clip, out))
    assert counts == {name: int(STAGES.index(name) >= STAGES.index("parse")) for name in STAGES}
    _check_complete(out)


def test_bad_input_in_a_later_stage_removes_the_partial_folder(short_clip, tmp_path, monkeypatch):
    from avatar3d.errors import UserError

    out = tmp_path / "data"

    def lost(*args, **kw):
        raise UserError("face tracked in only 10% of frames")

    monkeypatch.setattr(track, "run_track", lost)
    with pytest.raises(UserError, match="tracked in only"):
        run_preprocess(_config(short_clip, out))
    assert not out.exists() and not work_dir_for(out).exists()


def test_obama_clip_numbers(shared_data, tmp_path):
    src = shared_data / OBAMA
    out = tmp_path / "obama"
    run_preprocess(PreprocessConfig(video=src, output=out))
    report = _check_complete(out)
    manifest = read_manifest(out)
    info = probe(src)
    assert abs(manifest.num_frames - round(info.duration * 25)) <= 1
    assert report["tracked_fraction"] >= 0.99
    assert report["reprojection_px_median"] <= 3.0 * manifest.size / 512
    import soundfile as sf

    audio, rate = sf.read(str(DatasetPaths(out).audio), dtype="int16")
    assert rate == 16000 and audio.ndim == 1
    assert len(audio) == manifest.num_frames * SAMPLES_PER_FRAME
    tracks = load_tracks(out)
    assert tracks["landmarks"].shape == (manifest.num_frames, 478, 3)
    assert np.isfinite(tracks["R"]).all() and np.isfinite(tracks["t"]).all()


def test_track_gaps_short_interpolated_long_reported():
    from avatar3d.preprocess.track import Gap, classify_gaps, fill_gaps

    valid = np.ones(40, bool)
    valid[[0, 1]] = False  # short gap at the start
    valid[10:13] = False  # short gap inside
    valid[20:35] = False  # long gap
    interpolated, short, long = classify_gaps(valid, max_gap=12)
    assert short == [Gap(0, 2), Gap(10, 13)] and long == [Gap(20, 35)]
    assert interpolated.sum() == 5 and not interpolated[20:35].any()
    values = np.arange(40, dtype=np.float32)[:, None] * np.array([1.0, -2.0], np.float32)  # [40, 2]
    garbage = values.copy()
    garbage[~valid] = 999.0
    filled = fill_gaps(garbage, valid)
    np.testing.assert_allclose(filled[valid], values[valid])
    np.testing.assert_allclose(filled[10:13], values[10:13])  # linear inside a gap
    np.testing.assert_allclose(filled[20:35], values[20:35])
    np.testing.assert_allclose(filled[[0, 1]], values[[2, 2]])  # held before the first valid frame

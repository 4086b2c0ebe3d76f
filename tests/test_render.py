"""`avatar3d render`: a tiny fit on the synthetic head, rendered with new audio to an H.264 + AAC
mp4 of the right length; bad inputs are one-line errors that leave nothing behind."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avatar3d.cli import main
from avatar3d.drive.render import ping_pong, trajectory
from synth_dataset import make_tiny_run, speechy_audio

RATE = 22_050  # not 16 kHz: the render resamples for the prior and muxes at 48 kHz


def _wav(path: Path, seconds: float, rate: int = RATE) -> Path:
    import soundfile as sf

    sf.write(str(path), speechy_audio(seconds, rate), rate)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A RUN from a very short fit on test_fit's synthetic dataset (12 train + 4 val frames)."""
    return make_tiny_run(tmp_path_factory.mktemp("render"))


def _cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_ping_pong_trajectory():
    np.testing.assert_array_equal(ping_pong(9, 4), [0, 1, 2, 3, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(ping_pong(3, 1), [0, 0, 0])
    train = np.array([2, 3, 5])
    np.testing.assert_array_equal(trajectory(train, 6, "clip"), [2, 3, 5, 3, 2, 3])
    np.testing.assert_array_equal(trajectory(train, 4, "still", 1), [3, 3, 3, 3])


def test_render_writes_h264_aac_of_the_audio_length(run_dir, tmp_path, capsys):
    import av

    wav = _wav(tmp_path / "speech.wav", 2.0)
    out = tmp_path / "out.mp4"
    rc, err = _cli(["render", run_dir, "--audio", wav, "-o", out, "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert a.codec_context.sample_rate == 48_000
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
    with av.open(str(out)) as c:
        samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
    assert len(frames) == 50
    assert frames[0].shape == (64, 64, 3)  # the dataset's frame size
    video_s, audio_s = len(frames) / 25, samples / 48_000
    assert abs(video_s - 2.0) < 0.04 and abs(audio_s - video_s) < 0.04, (video_s, audio_s)
    stack = np.stack(frames).astype(np.float32)
    diffs = np.abs(np.diff(stack, axis=0)).mean(axis=(1, 2, 3))  # [49]
    assert (diffs > 0.5).mean() > 0.8, diffs  # the head moves (pose trajectory + mouth)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left

    # --pose still with a new background: still frames move only through the mouth, and the
    # background pixels outside the window are the new image
    import cv2

    bg = np.zeros((32, 32, 3), np.uint8)
    bg[:] = (0, 255, 0)  # BGR green
    cv2.imwrite(str(tmp_path / "green.png"), bg)
    out2 = tmp_path / "still.mp4"
    rc, err = _cli(["render", run_dir, "--audio", wav, "-o", out2, "--device", "cpu", "--no-progress",
                    "--pose", "still", "--background", tmp_path / "green.png"], capsys)
    assert rc == 0, err
    with av.open(str(out2)) as c:
        still = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]).astype(np.float32)
    assert len(still) == 50
    corner = still[:, :4, :4].reshape(-1, 3).mean(0)  # top-left corner: background in the synthetic clip
    assert corner[1] > 200 and corner[0] < 60 and corner[2] < 60, corner
    assert np.abs(np.diff(still, axis=0)).mean() < np.abs(np.diff(stack, axis=0)).mean()


def test_bad_inputs_are_one_line_errors_and_write_nothing(run_dir, tmp_path, capsys):
    wav = _wav(tmp_path / "ok.wav", 1.0)
    out = tmp_path / "out.mp4"

    def check(args, match: str):
        rc, err = _cli(["render", *args, "--device", "cpu", "--no-progress"], capsys)
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("avatar3d render: error:") and match in lines[0], err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    check([tmp_path / "nope", "--audio", wav, "-o", out], "run not found")
    (tmp_path / "empty_dir").mkdir()
    check([tmp_path / "empty_dir", "--audio", wav, "-o", out], "not an avatar3d run")

    # a run whose dataset is gone, and one whose dataset has an older format version
    config = json.loads((run_dir / "config.json").read_text())
    data = Path(config["fit"]["data"])
    for name, version in (("gone", None), ("old", 0)):
        run = tmp_path / f"run_{name}"
        shutil.copytree(run_dir, run)
        target = tmp_path / f"data_{name}"
        if version is not None:
            shutil.copytree(data, target)
            manifest = json.loads((target / "manifest.json").read_text())
            manifest["format_version"] = version
            (target / "manifest.json").write_text(json.dumps(manifest))
        cfg = json.loads(json.dumps(config))
        cfg["fit"]["data"] = str(target)
        (run / "config.json").write_text(json.dumps(cfg))
        check([run, "--audio", wav, "-o", out], "dataset not found" if version is None else "format version 0")

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    check([run_dir, "--audio", garbage, "-o", out], "garbage.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    check([run_dir, "--audio", empty, "-o", out], "empty")
    check([run_dir, "--audio", tmp_path / "missing.wav", "-o", out], "not found")
    short = _wav(tmp_path / "short.wav", 0.1)
    check([run_dir, "--audio", short, "-o", out], "at least 0.5 s")
    rc, err = _cli(["render", run_dir, "--audio", wav, "-o", tmp_path / "no" / "where.mp4", "--device", "cpu"], capsys)
    assert rc == 2 and "output folder does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()


def test_eval_writes_metrics_and_plot(run_dir, tmp_path, capsys):
    """Self-driven numbers equal fit's val metrics (one implementation); cross-driven renders the
    audio's length; the torso of the composite is the real clip's, so its flicker matches."""
    import cv2

    from avatar3d.drive.evaluate import summary_line

    wav = _wav(tmp_path / "speech.wav", 1.2)
    # 0.6 s of speech then 0.6 s of digital silence: silent frames are found by the envelope
    import soundfile as sf

    a, rate = sf.read(str(wav), dtype="float32")
    a[len(a) // 2 :] = 0
    sf.write(str(wav), a, rate)
    out = tmp_path / "eval.json"
    rc, err = _cli(["eval", run_dir, "--audio", wav, "-o", out, "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    result = json.loads(out.read_text())
    fit_metrics = json.loads((run_dir / "metrics.json").read_text())
    s = result["self_driven"]
    assert s["psnr"] == pytest.approx(fit_metrics["psnr"], abs=1e-4)
    assert s["ssim"] == pytest.approx(fit_metrics["ssim"], abs=1e-4)
    assert s["frames"] == fit_metrics["frames"]
    c, real = result["cross_driven"], result["real_clip"]
    from avatar3d.core.dataset import load_tracks, read_manifest
    from avatar3d.drive.evaluate import tracked_openings

    data = run_dir.parent / "data"  # the shut-mouth check counts the val frames at or under the bound
    val_open = tracked_openings(load_tracks(data))[read_manifest(data).frame_indices("val")]
    assert s["shut_val_frames"] == int((val_open <= real["train_opening_p10"]).sum())
    assert c["frames"] == 30
    assert 15 <= c["silent_frames"] < 30  # the silent second half and the pauses between bursts
    assert 0 < c["silent_settled_frames"] <= c["silent_frames"] - 2  # the look-ahead hears the next burst
    assert c["silent_settled_opening_max"] <= c["silent_opening_max"]
    assert c["silent_settled_opening_median"] <= c["silent_settled_opening_max"]
    # the composite's torso is the real clip's own torso pixels (ping-pong over its frames), so
    # its flicker is the real one's within the bound
    assert real["torso_flicker"] > 0 and 0.5 < c["torso_flicker_vs_real"] <= 1.5, (c, real)
    assert result["prior"] == str(run_dir / "prior.pt")  # the identity's fine-tuned prior
    from avatar3d.audio.prior import load_prior

    run_prior = load_prior(run_dir / "prior.pt")
    assert float(run_prior.voice_match) == 1.0  # matching driving voices to its own
    assert np.all(run_prior.contrast.numpy() == 1.0)  # and syllable contrast on, toward rest only
    assert not run_prior.contrast_away.any()
    # the silence bound re-measured on training frames shown at the avatar's resolution
    assert real["train_frames_fit_resolution"] > 0 and real["train_opening_p10_fit_resolution"] is not None
    # the avatar's articulation is read against the real clip read at that resolution too
    art, ref = c["articulation"], real["articulation_fit_resolution"]
    assert ref["opening_spread"] != real["articulation"]["opening_spread"]
    assert art["opening_spread_vs_real"] == pytest.approx(art["opening_spread"] / ref["opening_spread"])
    if ref.get("bilabial_closure_rate"):
        assert art["bilabial_closure_rate_vs_real"] == pytest.approx(
            art["bilabial_closure_rate"] / ref["bilabial_closure_rate"])
    assert (run_dir / "eval_clip_cache.json").is_file()  # kept for the run's next eval
    png = cv2.imread(str(out.with_suffix(".png")))
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 600
    # seams of the val frames and of the cross-driven frames, and their contact sheet
    for part, frames in ((s, s["frames"]), (c, 30)):
        seams = part["seams"]
        assert seams["frames"] == frames and seams["seam_ratio"] > 0
        assert seams["ghost_frames"] <= frames and seams["hole_frames"] <= frames
    assert 0 <= c["codes_out_of_training_range_frames"] <= 30
    sheet = cv2.imread(str(tmp_path / "eval_seams.png"))
    assert sheet is not None and sheet.shape[0] > 4 * 256
    # the printed line puts the silent mouth beside its bound; None-safe, no clause without silence
    line = summary_line(result, out, out.with_suffix(".png"))
    assert f"silent mouth open {c['silent_settled_opening_median']:.4f} over {c['silent_settled_frames']} frames" in line
    assert f"training p10 {real['train_opening_p10']:.4f}, {real['train_opening_p10_fit_resolution']:.4f} at" in line
    assert f"seam {c['seams']['seam_ratio']:.2f}x, ghost" in line
    quiet = {**result, "cross_driven": {**c, "silent_settled_frames": 0}, "self_driven": {**s, "lmd_px": None}}
    line = summary_line(quiet, out, out.with_suffix(".png"))
    assert "silent mouth" not in line and "LMD n/a px" in line
    rc, err = _cli(["eval", tmp_path / "nope", "--device", "cpu"], capsys)
    assert rc == 2 and "run not found" in err


def test_eval_reads_the_clip_once_per_run(run_dir, tmp_path, monkeypatch):
    """The real clip's every-frame measures are kept beside the run and read back while the
    dataset and the window are unchanged; another window, or a corrupt cache, measures anew."""
    import dataclasses

    import avatar3d.core.scene as scene_module
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene
    from avatar3d.drive.evaluate import clip_frame_measures

    scene = load_run_scene(open_run(run_dir), "")
    cache = tmp_path / "clip_cache.json"
    reads = []
    real_iter = scene_module.iter_dataset_frames

    def counting_iter(*args, **kwargs):
        reads.append(1)
        return real_iter(*args, **kwargs)

    monkeypatch.setattr(scene_module, "iter_dataset_frames", counting_iter)
    first = clip_frame_measures(scene, cache)
    assert first["torso_flicker"] > 0 and len(reads) == 1
    opened = [v for v in first["opening_fit_resolution"] if v is not None]  # every frame, read at the fit resolution
    assert len(first["opening_fit_resolution"]) == scene.motion.shape[0] and len(opened) > 0.9 * scene.motion.shape[0]
    assert clip_frame_measures(scene, cache) == first and len(reads) == 1  # read back, not measured
    other = dataclasses.replace(scene, window=dataclasses.replace(scene.window, size=scene.window.size // 2))
    clip_frame_measures(other, cache)
    assert len(reads) == 2  # another fit resolution: measured anew, and kept in its place
    cache.write_text("{not json")
    assert clip_frame_measures(scene, cache) == first and len(reads) == 3
    assert clip_frame_measures(scene, cache) == first and len(reads) == 3  # the mended cache is read back


def test_shut_val_openings():
    """The shut-mouth check picks the val frames at or under the training p10 and reports the medians
    of the given rendered openings on them beside the real frames' reading at the fit resolution."""
    from avatar3d.drive.evaluate import shut_val_openings

    v = 20
    true = np.full(v, 1.0)  # all wider open than the bound (0.5) but two
    true[[0, v - 1]] = 0.0
    rendered = np.arange(v, dtype=np.float64) / 100
    true_fit = 3 * rendered
    out = shut_val_openings(0.5, true, true_fit, rendered, 2 * rendered)
    assert out["shut_val_frames"] == 2
    assert out["shut_opening_tracked_motion"] == pytest.approx((v - 1) / 200)
    assert out["shut_opening_audio_driven"] == pytest.approx((v - 1) / 100)
    assert out["shut_opening_truth_fit_resolution"] == pytest.approx(3 * (v - 1) / 200)
    true[:] = np.nan  # no face tracked in any val frame
    assert shut_val_openings(0.5, true, true_fit, rendered, rendered)["shut_opening_truth_fit_resolution"] is None
    assert shut_val_openings(None, true, true_fit, rendered, rendered)["shut_val_frames"] == 0


def test_speech_sync_leaves_digital_silence_out():
    """A stretch of -100 dB digital silence must not decide the sync correlation: over speech the
    mouth follows the envelope; in the silence it happens to be half open."""
    from avatar3d.drive.evaluate import SILENCE_DB, speech_sync

    rng = np.random.default_rng(0)
    env = rng.normal(-20, 6, 200)
    opening = 0.05 + 0.004 * (env + 20) + rng.normal(0, 0.01, 200)
    env[80:130] = -100.0
    opening[80:130] = 0.1
    from avatar3d.drive.sync import lagged_correlation

    assert lagged_correlation(opening, env, max_lag=0).best_r < 0  # the silence dominates
    lc = speech_sync(opening, env, max_lag=2)
    assert lc.best_r > 0.8 and lc.best_lag == 0 and SILENCE_DB > -100


def test_render_never_imports_the_trainer_or_its_data_loader(run_dir, tmp_path):
    """`avatar3d render` draws from the run and the dataset's tracks: in a fresh interpreter,
    running its entry point leaves the fit command, the trainer, the losses, the initialisation
    and the training-data loader unimported."""
    import subprocess
    import sys

    wav = _wav(tmp_path / "speech.wav", 1.0)
    out = tmp_path / "out.mp4"
    code = (
        "import sys; from avatar3d.cli import main; "
        f"rc = main(['render', {str(run_dir)!r}, '--audio', {str(wav)!r}, '-o', {str(out)!r}, '--device', 'cpu', "
        "'--no-progress']); "
        "heavy = [m for m in ('avatar3d.fit', 'avatar3d.gaussian.trainer', 'avatar3d.gaussian.data', "
        "'avatar3d.gaussian.losses', 'avatar3d.gaussian.init') if m in sys.modules]; "
        "print('RC', rc, 'HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "RC 0 HEAVY []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 0


def test_the_run_draws_its_neck_and_runs_from_before_the_neck_draw_the_head_only(run_dir, tmp_path):
    """A run records how far down it draws the neck (scene.json ``neck_reach``) and render, eval
    and the viewer compose with it; a scene.json written before the neck existed reads as head
    only, and its bases keep the frame's neck below the head as before."""
    import json

    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene
    from avatar3d.drive.render import FrameBases

    scene = load_run_scene(open_run(run_dir), "")
    assert json.loads((run_dir / "scene.json").read_text())["neck_reach"] == scene.neck_reach > 0
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    obj = json.loads((old / "scene.json").read_text())
    del obj["neck_reach"]
    (old / "scene.json").write_text(json.dumps(obj))
    old_scene = load_run_scene(open_run(old), "")
    assert old_scene.neck_reach == 0.0
    i = int(scene.train[0])
    new_base, old_base = FrameBases(scene, [i])[i], FrameBases(old_scene, [i])[i]
    assert (new_base.image != old_base.image).any()  # the drawn neck is taken out of the new base

"""The viewer page end to end in headless Chromium (Debian's chromium + chromium-driver, selenium):
a wav with two speech bursts is the fake microphone; frames arrive, the mouth opens during the
bursts and is shut in the silences (from the motion codes the frames carry, and from the face
tracker on pictures the page showed), and window.avatar3dStats reports latency. File mode plays
the run's own clip with the picture on the audio clock. Skips, with the reason, without a browser."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from avatar3d.viewer.browser import browser_unavailable_reason

REASON = browser_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no headless browser: {REASON}")

# the fake microphone: (seconds, speech?) segments
SEGMENTS = ((1.0, False), (1.6, True), (1.4, False), (1.6, True), (1.4, False))
EDGE = 0.4  # seconds at each segment edge left out of the checks (capture start, the prior's window)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from synth_dataset import make_subject_run

    return make_subject_run(tmp_path_factory.mktemp("viewer_browser"))


@pytest.fixture(scope="module")
def url(run_dir):
    from avatar3d.viewer.browser import viewer_server

    with viewer_server(run_dir) as u:
        yield u


def _bursts(path: Path) -> np.ndarray:
    import soundfile as sf

    from avatar3d.synth.subject import speech_audio

    parts = []
    for i, (seconds, speech) in enumerate(SEGMENTS):
        n = int(seconds * 16000)
        parts.append(speech_audio(10 + i, seconds)[:n] if speech else np.zeros(n, np.float32))
    audio = np.concatenate(parts).astype(np.float32)
    sf.write(str(path), audio, 16000, subtype="PCM_16")
    return audio


def _tracked_jaw(images: list[np.ndarray]) -> np.ndarray:
    """The face tracker's jawOpen on each picture (enlarged 2x for it), NaN without a face. [F]"""
    import cv2

    from avatar3d.core.vocab import blendshape_index
    from avatar3d.models import face_landmarker_path
    from avatar3d.preprocess.track import FaceTracker

    out = np.full(len(images), np.nan)
    with FaceTracker(face_landmarker_path(), video=False) as tracker:
        for i, img in enumerate(images):
            obs = tracker.detect(cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
            if obs is not None:
                out[i] = obs.blendshapes[blendshape_index("jawOpen")]
    return out


def test_mic_mode_end_to_end(run_dir, url, tmp_path):
    from avatar3d.drive.render import fit_audio, load_run_prior, num_output_frames
    from avatar3d.audio.prior import predict_motion_from_audio
    from avatar3d.viewer.browser import canvas_png, chromium, console_errors, stats, wait_for

    audio = _bursts(tmp_path / "bursts.wav")
    prior, _ = load_run_prior(run_dir, "cpu")
    offline_jaw = predict_motion_from_audio(prior, fit_audio(audio, num_output_frames(len(audio))))[:, 0]
    rest = float(prior.rest[0])
    threshold = rest + 0.5 * (np.percentile(offline_jaw, 95) - rest)
    total = len(audio) / 16000
    with chromium(tmp_path / "bursts.wav") as driver:
        # idle head motion off: the picture's mouth then depends on the audio alone (a short fit's
        # mouth also follows the eye and brow channels of the idle motion's training frames)
        driver.get(f"{url}?mode=mic&idle=0&jaw={threshold:.4f}")
        wait_for(driver, lambda s: s["frames_drawn"] > 0, 60, "the first frame")
        shots = []  # (jaw of the shown frame, picture)
        t_end = time.monotonic() + total + 1.0
        while time.monotonic() < t_end:
            s = stats(driver)
            if s["shown"] is not None:
                shots.append((s["shown"][1], canvas_png(driver)))
            time.sleep(0.15)
        s = wait_for(driver, lambda s: s["frames"] >= int(total * 25) - 10, 30, "every frame of the wav")
        driver.save_screenshot(str(tmp_path / "mic.png"))
        errors = console_errors(driver)
    assert s["mode"] == "mic" and s["render"] == "server"
    assert not s["errors"] and not errors, (s["errors"], errors)
    assert s["latency_ms_p50"] is not None and 0 < s["latency_ms_p50"] < 5000
    assert s["latency_ms_p95"] >= s["latency_ms_p50"]
    assert len(s["mouth_latency_ms"]) >= 1  # a burst onset was seen and the mouth opened after it

    codes = np.array(s["codes"])  # [k, t, jaw] of every frame received
    assert np.array_equal(codes[:, 0], np.arange(len(codes)))  # every frame, in order, none lost
    t, jaw = codes[:, 1], codes[:, 2]
    start = 0.0
    for seconds, speech in SEGMENTS:
        inside = (t >= start + EDGE) & (t < start + seconds - EDGE)
        if inside.any():
            if speech:
                assert jaw[inside].max() > rest + 0.6 * (offline_jaw.max() - rest), f"mouth shut in burst at {start} s"
            else:
                assert jaw[inside].max() <= rest + 1e-3, f"mouth open in the silence at {start} s: {jaw[inside].max()}"
        start += seconds

    # the face tracker on pictures the page showed: a face, and its mouth opens with the codes
    jaws = np.array([j for j, _ in shots])
    tracked = _tracked_jaw([img for _, img in shots])
    found = ~np.isnan(tracked)
    assert found.mean() >= 0.8, f"the tracker found a face in {found.sum()} of {len(shots)} shown frames"
    open_, shut = found & (jaws > threshold), found & (jaws <= rest + 1e-3)
    assert open_.sum() >= 2 and shut.sum() >= 2, (open_.sum(), shut.sum())
    assert tracked[open_].mean() > tracked[shut].mean() + 0.02, (tracked[open_], tracked[shut])


def test_file_mode_end_to_end(url, tmp_path):
    from avatar3d.viewer.browser import chromium, console_errors, wait_for

    with chromium() as driver:
        driver.get(f"{url}?mode=file")  # the run's own clip (4 s)
        s = wait_for(driver, lambda s: s["state"] == "done", 60, "the clip to play to its end")
        driver.save_screenshot(str(tmp_path / "file.png"))
        errors = console_errors(driver)
    assert s["mode"] == "file" and not s["errors"] and not errors, (s["errors"], errors)
    assert s["frames"] == 100 and s["frames_drawn"] >= 10  # 4 s at 25 fps; a busy CPU draws fewer
    assert s["drift_ms_p50"] is not None and abs(s["drift_ms_p50"]) <= 40


def test_browser_render_mode_draws_what_the_server_draws(run_dir, url, tmp_path):
    """render=browser: the page loads the baked avatar and draws it with WebGL2 (SwiftShader here);
    a frame it shows, against avatar3d's own render of the same parameters (the fitted avatar, not
    the bake), over the head's square. File mode plays in step with the sound."""
    import torch

    from avatar3d.viewer.browser import chromium, console_errors, wait_for
    from avatar3d.viewer.session import FrameParams, ViewerModel

    _bursts(tmp_path / "bursts.wav")
    with chromium(tmp_path / "bursts.wav") as driver:
        driver.get(f"{url}?mode=mic&render=browser")
        s = wait_for(driver, lambda s: s["frames_drawn"] >= 30, 90, "30 frames drawn by the page")
        grab = ("return [document.getElementById('view').toDataURL('image/png'), "  # picture and parameters
                "JSON.parse(JSON.stringify(window.avatar3dStats))]")  # at the same moment
        url_png, s = driver.execute_script(grab)
        # orbit, zoom and a slider, as the page's controls send them: the page draws the new view
        driver.execute_script("control({yaw: 6, pitch: -3, zoom: 1.6, expression: {smile: 0.6}})")
        wait_for(driver, lambda s: (s["browser"]["shown_draw"] or {}).get("crop", [0, 0, 0])[2] < s["resolution"], 30,
                 "a zoomed frame drawn by the page")
        turned_png, t = driver.execute_script(grab)
        errors = console_errors(driver)
        driver.get(f"{url}?mode=file&render=browser")
        f = wait_for(driver, lambda s: s["state"] == "done", 90, "the clip to play to its end")
        errors += console_errors(driver)
    assert s["render"] == "browser" and f["render"] == "browser", (s["errors"], f["errors"])
    assert not s["errors"] and not f["errors"] and not errors, (s["errors"], f["errors"], errors)
    assert s["browser"]["bytes"] > 0 and s["browser"]["gaussians"] > 0 and s["browser"]["draw_ms"] is not None
    assert f["frames_drawn"] >= 10 and abs(f["drift_ms_p50"]) <= 40

    import base64

    import cv2

    model = ViewerModel(run_dir, torch.device("cpu"))
    assert t["browser"]["shown_draw"]["code"] != s["browser"]["shown_draw"]["code"]
    for name, png, stats_ in (("mic", url_png, s), ("turned", turned_png, t)):
        shown = cv2.imdecode(np.frombuffer(base64.b64decode(png.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        draw = stats_["browser"]["shown_draw"]
        ours = model.draw_params(FrameParams.from_json(draw))
        x, y, side, _ = draw["head"]
        err = np.mean((shown[y:y + side, x:x + side].astype(float) - ours[y:y + side, x:x + side].astype(float)) ** 2)
        psnr = 10 * np.log10(255 ** 2 / max(err, 1e-10))
        cv2.imwrite(str(tmp_path / f"browser_vs_server_{name}.png"), np.concatenate([shown, ours], 1)[..., ::-1])
        # the bar is 30 dB; 42.6 dB measured here (Chromium 150, SwiftShader): 35 catches a
        # projection off by 30 % in one axis (39 dB) only loosely, a wrong pose or composite surely
        assert psnr >= 35.0, f"{name}: browser render {psnr:.1f} dB against the server's (see {tmp_path})"

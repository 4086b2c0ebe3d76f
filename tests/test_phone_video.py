"""Phone videos as they come (issue 27): a display rotation (portrait, front camera mirrored), a
variable frame rate, 10-bit HLG/PQ HDR, and a 2160x3840 clip. The files are built here from the
synthetic talking head (a face the tracker finds), re-encoded the way phones store them."""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from avatar3d.core.picture import Orientation, orientation_of, rgb_to_ycbcr10, sdr_to_hdr_signal
from avatar3d.core.video import iter_frames, probe, read_frames_at
from avatar3d.errors import UserError

SIZE = 256


def _store(upright: np.ndarray, k: int, mirror: bool) -> np.ndarray:
    """What a phone stores so that rotating by ``k`` quarter turns ccw (then mirroring) shows ``upright``."""
    u = upright[:, ::-1] if mirror else upright
    return np.ascontiguousarray(np.rot90(u, -k))


def _yuv420p10(rgb_signal: np.ndarray) -> np.ndarray:
    """R'G'B' [H, W, 3] in [0, 1] -> a yuv420p10le frame array for PyAV ([H * 3 / 2, W] uint16)."""
    yuv = np.clip(np.round(rgb_to_ycbcr10(rgb_signal)), 0, 1023)
    h, w = yuv.shape[:2]
    y = yuv[..., 0]
    chroma = [yuv[..., c].reshape(h // 2, 2, w // 2, 2).mean((1, 3)).round() for c in (1, 2)]
    return np.concatenate([y.ravel(), chroma[0].ravel(), chroma[1].ravel()]).reshape(h * 3 // 2, w).astype(np.uint16)


def write_clip(path: Path, frames: list[np.ndarray], audio: np.ndarray | None = None, *, k: int = 0,
               mirror: bool = False, times: list[float] | None = None, hdr: str | None = None) -> Path:
    """Encode upright RGB ``frames`` as a phone would store them: turned by the display matrix
    (``k``, ``mirror``), at presentation ``times`` (seconds; default 25 fps), as 10-bit ``hdr``
    ("hlg"/"pq", FFV1 in Matroska with the transfer tagged) or H.264; with 48 kHz stereo AAC of
    ``audio`` (16 kHz mono)."""
    import av

    times = times if times is not None else [i / 25 for i in range(len(frames))]
    with av.open(str(path), "w") as c:
        h, w = _store(frames[0], k, mirror).shape[:2]
        if hdr:
            s = c.add_stream("ffv1", rate=25)
            s.pix_fmt = "yuv420p10le"
            cc = s.codec_context
            cc.color_trc, cc.color_primaries, cc.colorspace, cc.color_range = (16 if hdr == "pq" else 18), 9, 9, 1
        else:
            s = c.add_stream("libx264", rate=25, options={"crf": "12", "preset": "ultrafast"})
            s.pix_fmt = "yuv420p"
        s.width, s.height = w, h
        s.codec_context.time_base = Fraction(1, 1000)
        if k or mirror:
            s.set_display_rotation(90 * k, hflip=mirror)
        a = None
        if audio is not None:
            a = c.add_stream("aac", rate=48000, layout="stereo")
        for t, frame in zip(times, frames):
            stored = _store(frame, k, mirror)
            if hdr:
                vf = av.VideoFrame.from_ndarray(_yuv420p10(sdr_to_hdr_signal(stored, hdr)), format="yuv420p10le")
                vf.color_trc = 16 if hdr == "pq" else 18
            else:
                vf = av.VideoFrame.from_ndarray(stored, format="rgb24")
            vf.pts, vf.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            x48 = np.interp(np.arange(len(audio) * 3) / 3, np.arange(len(audio)), audio).astype(np.float32)
            stereo = np.stack([x48, x48])
            for i in range(0, stereo.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, i : i + 1024]), format="fltp", layout="stereo")
                af.sample_rate, af.pts = 48000, i
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """The synthetic talking head, 4 s at 256²: its upright frames and 16 kHz audio."""
    from avatar3d.audio.features import load_audio
    from avatar3d.synth.subject import SynthPaths, write_synth

    root = tmp_path_factory.mktemp("phone")
    write_synth(root / "synth", seed=0, seconds=4.0, size=SIZE)
    clip = SynthPaths(root / "synth").clip
    return root, list(iter_frames(clip)), load_audio(clip)


# ---------------------------------------------------------------------------------------------
# Orientation


@pytest.mark.parametrize("k,mirror", [(1, False), (2, False), (3, False), (0, True), (1, True), (3, True)])
def test_display_rotation_gives_upright_frames(tmp_path, k, mirror):
    """Every orientation a phone writes comes out upright (checked here against PyAV's documented
    meaning of the matrix; FFmpeg's own auto-rotation agreed on all eight, BENCHMARKS.md)."""
    rng = np.random.default_rng(k)
    upright = [np.kron(rng.integers(0, 255, (6, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8) for _ in range(3)]
    path = write_clip(tmp_path / "r.mp4", upright, k=k, mirror=mirror)
    info = probe(path)
    assert (info.width, info.height) == (64, 96)  # the upright size, whatever is stored
    assert info.picture["orientation"] != "none"
    got = list(iter_frames(path))
    assert len(got) == 3 and got[0].shape == (96, 64, 3)
    for a, b in zip(got, upright):
        assert np.abs(a.astype(int) - b).mean() < 4
    (_, seeked), = read_frames_at(path, [0.04])
    assert np.abs(seeked.astype(int) - upright[1]).mean() < 4


def test_orientation_of_matrices():
    one = 65536
    assert orientation_of(None) == Orientation()
    assert orientation_of((one, 0, 0, 0, one, 0, 0, 0, 1 << 30)) == Orientation()
    assert orientation_of((0, -one, 0, one, 0, 0, 0, 0, 1 << 30)) == Orientation(1, False)  # rotation 90 ccw
    assert orientation_of((0, one, 0, -one, 0, 0, 0, 0, 1 << 30)) == Orientation(3, False)
    assert orientation_of((-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30)) == Orientation(2, False)
    assert orientation_of((-one, 0, 0, 0, one, 0, 0, 0, 1 << 30)) == Orientation(0, True)
    c, s = int(one * np.cos(0.5)), int(one * np.sin(0.5))
    with pytest.raises(UserError, match="multiples of 90"):
        orientation_of((c, -s, 0, s, c, 0, 0, 0, 1 << 30))


# ---------------------------------------------------------------------------------------------
# HDR


@pytest.mark.parametrize("transfer", ["hlg", "pq"])
def test_hdr_frames_come_back_as_their_sdr_source(subject, tmp_path, transfer):
    _, frames, _ = subject
    path = write_clip(tmp_path / f"{transfer}.mkv", frames[:5], hdr=transfer)
    info = probe(path)
    assert transfer in info.picture["hdr"] and "SDR" in info.picture["hdr"]
    got = list(iter_frames(path))
    assert len(got) == 5
    for a, b in zip(got, frames[:5]):
        err = np.abs(a.astype(int) - b.astype(int))
        # 4:2:0 chroma and 10-bit quantisation; values above the knee (0.9 of white) roll off
        assert err.mean() < 2.5 and np.percentile(err, 99) < 16, (err.mean(), np.percentile(err, 99))
        assert abs(a.mean() - b.mean()) < 1.5  # neither washed out nor crushed


# ---------------------------------------------------------------------------------------------
# Whole preprocess on phone-like files


def _dataset_frames(data: Path) -> list[np.ndarray]:
    from avatar3d.core.dataset import DatasetPaths

    return list(iter_frames(DatasetPaths(data).frames))


def _preprocess(video: Path, out: Path) -> Path:
    from avatar3d.preprocess.pipeline import PreprocessConfig, run_preprocess

    return run_preprocess(PreprocessConfig(video=video, output=out, size=SIZE))


def _audio_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 800) -> int:
    """Lag (samples) of ``a`` against ``b`` that correlates best."""
    n = min(len(a), len(b)) - 2 * max_lag
    lags = range(-max_lag, max_lag + 1, 4)
    scores = [float(np.dot(a[max_lag + lag : max_lag + lag + n], b[max_lag : max_lag + n])) for lag in lags]
    return list(lags)[int(np.argmax(scores))]


@pytest.fixture(scope="module")
def reference(subject):
    """The dataset of the plain (upright, 25 fps, SDR) clip."""
    root, frames, audio = subject
    return _preprocess(write_clip(root / "plain.mp4", frames, audio), root / "d_plain")


def test_portrait_phone_clip_preprocesses_upright(subject, reference):
    from avatar3d.audio.features import load_audio
    from avatar3d.core.dataset import DatasetPaths, read_manifest

    root, frames, audio = subject
    data = _preprocess(write_clip(root / "portrait.mp4", frames, audio, k=3), root / "d_portrait")  # stored on its side
    manifest = read_manifest(data)
    assert manifest.source_picture["orientation"] == "rotated 90 cw"
    ours, ref = _dataset_frames(data), _dataset_frames(reference)
    assert len(ours) == len(ref) == manifest.num_frames
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(ours, ref)]) < 3
    report = json.loads(DatasetPaths(data).report.read_text())
    assert report["tracked_fraction"] == 1.0
    wav = load_audio(DatasetPaths(data).audio)
    assert len(wav) == manifest.num_frames * 640
    assert abs(_audio_lag(wav, load_audio(DatasetPaths(reference).audio))) <= 16  # 1 ms


def test_variable_frame_rate_is_resampled_in_sync(subject, reference):
    """Frame intervals between 20 and 50 ms (a phone's VFR): each 25 fps output frame is the
    source frame nearest its time, so it shows the synthetic head's frame of that time (the
    source frames are the 25 fps frames nearest their own times); audio stays aligned."""
    from avatar3d.audio.features import load_audio
    from avatar3d.core.dataset import DatasetPaths, read_manifest

    root, frames, audio = subject
    rng = np.random.default_rng(5)
    times = np.cumsum(np.r_[0.0, rng.uniform(0.020, 0.050, 400)])
    times = times[times < len(frames) / 25 - 0.02]
    src = [frames[min(len(frames) - 1, int(round(t * 25)))] for t in times]
    data = _preprocess(write_clip(root / "vfr.mp4", src, audio, times=list(times)), root / "d_vfr")
    manifest = read_manifest(data)
    ours, ref = _dataset_frames(data), _dataset_frames(reference)
    assert abs(manifest.num_frames - len(frames)) <= 1
    # output frame i shows the source frame nearest i/25, whose content is frame round(t*25)
    nearest = [int(round(times[np.argmin(np.abs(times - i / 25))] * 25)) for i in range(len(ours))]
    assert np.mean([n == i for i, n in enumerate(nearest)]) > 0.8  # the check below is not trivial
    for i, a in enumerate(ours):
        assert np.abs(a.astype(int) - ref[min(nearest[i], len(ref) - 1)]).mean() < 3
    wav = load_audio(DatasetPaths(data).audio)
    assert len(wav) == manifest.num_frames * 640
    assert abs(_audio_lag(wav, load_audio(DatasetPaths(reference).audio))) <= 16


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc (Linux)")
def test_4k_portrait_clip_peak_memory(subject, tmp_path):
    """A 2160x3840 portrait clip (2 s): preprocessed in a child process; frames are streamed, so
    its peak memory stays near that of a small clip's (measured and bounded here)."""
    import cv2

    root, frames, audio = subject
    canvas = []
    for f in frames[:50]:
        big = np.full((3840, 2160, 3), 90, np.uint8)
        big[1200:1200 + 1400, 380:380 + 1400] = cv2.resize(f, (1400, 1400), interpolation=cv2.INTER_LINEAR)
        canvas.append(big)
    clip = write_clip(tmp_path / "uhd.mp4", canvas, audio[: 50 * 640], k=3)  # stored 3840x2160, turned
    del canvas
    out = tmp_path / "d_uhd"
    proc = subprocess.run([sys.executable, "-c", "import sys; from avatar3d.cli import main; sys.exit(main())",
                           "preprocess", str(clip), "-o", str(out), "--size", str(SIZE)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    peak_gb = report["peak_rss_gb"]  # the report's own (VmHWM: ru_maxrss would keep pytest's across exec)
    assert peak_gb < 1.5, f"peak RSS {peak_gb:.2f} GB (a 256² clip's preprocess: about 0.6 GB)"
    assert report["stages"]["decode"]["source_size"] == [2160, 3840]
    assert report["tracked_fraction"] > 0.9
    print(f"4K portrait, 2 s: peak RSS {peak_gb:.2f} GB, decode {report['timings_s']['decode']:.1f} s; "
          f"{proc.stdout.strip().splitlines()[-1]}")

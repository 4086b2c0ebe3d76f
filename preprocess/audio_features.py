"""Preprocess stage: audio features aligned to the video frames.

Reads ``audio.wav`` (16 kHz mono, exactly ``num_frames * 640`` samples) and writes one
``features/<encoder>.npy`` per encoder, ``[num_frames, *frame_shape] float32`` (see
:mod:`avatar3d.audio.features` for each encoder's layout). Precomputed ``.npy`` features from other
projects can be brought in too; they are resampled to the 25 fps frames.

With the ``mel`` features the stage also measures how far the audio trails the mouth (from the
tracked jawOpen, see :func:`measure_av_offset`) and reports it: a source whose sound is out of
sync with its picture is worth knowing about before an avatar is fitted to it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar3d.audio import features as A
from avatar3d.core.dataset import FPS, SAMPLES_PER_FRAME, DatasetPaths, Manifest, load_tracks
from avatar3d.errors import UserError
from avatar3d.fsutil import atomic_file

VERSION = 3  # 2: mel stats carry the audio/mouth offset; 3: and its per-segment lags
AV_SEGMENTS = 4  # the offset is also measured on this many consecutive parts of the clip


@dataclass(frozen=True)
class AudioFeatureConfig:
    """Which audio features the dataset gets."""

    encoders: tuple[str, ...] = ("mel",)
    """Audio encoders to run (see avatar3d.audio.features.ENCODERS): mel, whisper_tiny_en (needs the
    `audio` extra)."""

    precomputed: tuple[Path, ...] = ()
    """Precomputed features (.npy, ER-NeRF/TalkingGaussian layout, e.g. DeepSpeech [M, 16, 29]
    or HuBERT [M, 1024] / [M, 2, 1024] at 25 or 50 fps) to align to the frames; each is stored
    as features/<file stem>.npy."""

    device: str = "cpu"
    """Device for encoders that run a network (whisper_tiny_en): cpu or cuda."""


def _save(path: Path, arr: np.ndarray) -> None:
    with atomic_file(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr, np.float32))


def measure_av_offset(paths: DatasetPaths, mel: np.ndarray) -> dict:
    """How far the dataset's audio trails its mouth, from ``mel`` features ``[N, 4, 80]`` and the
    tracked jawOpen (tracks.npz): ``{"frames": int, "ms": int, "r": float, "r_in_sync": float,
    "max_lag": int, "segment_lags": [int, ...]}``: the lag in +-``max_lag``
    (``TrainHyper.max_offset``) frames where jawOpen and the speech loudness correlate best
    (:func:`avatar3d.audio.prior.av_offset`, what prior training and fine-tuning shift the tracks
    by), that correlation, the one at lag 0, and the best lag of each of ``AV_SEGMENTS``
    consecutive parts of the clip (None for a part too short to tell). Positive: the sound comes
    late. All None when too few frames are tracked to tell."""
    from avatar3d.audio.prior import JAW_OPEN, TrainHyper, av_offset, motion_from_blendshapes

    tracks = load_tracks(paths.root)
    jaw = motion_from_blendshapes(tracks["blendshapes"])[:, JAW_OPEN]
    valid = np.asarray(tracks["valid"], bool)
    lag, r = av_offset(mel, jaw, valid, TrainHyper().max_offset)
    _, r_in_sync = av_offset(mel, jaw, valid, 0)
    if not np.isfinite(r):  # too few tracked frames to correlate
        return {"frames": None, "ms": None, "r": None, "r_in_sync": None}
    in_sync = round(r_in_sync, 3) if np.isfinite(r_in_sync) else None
    max_lag = TrainHyper().max_offset
    segments = []
    for part in np.array_split(np.arange(len(jaw)), AV_SEGMENTS):
        seg_lag, seg_r = av_offset(mel[part], jaw[part], valid[part], max_lag)
        segments.append(int(seg_lag) if np.isfinite(seg_r) else None)
    return {"frames": int(lag), "ms": int(round(1000 * lag / FPS)), "r": round(r, 3), "r_in_sync": in_sync,
            "max_lag": int(max_lag), "segment_lags": segments}


def run_audio_features(paths: DatasetPaths, manifest: Manifest, config: AudioFeatureConfig) -> dict:
    """Write ``paths.features(name)`` for every configured encoder; return stats for report.json.

    Returns ``{name: {"shape": [...], "seconds": float, "mean": float, "std": float,
    "silent_fraction": float, "av_offset": dict (mel only, see measure_av_offset)}}``.
    """
    for name in config.encoders:
        A.get_encoder(name)  # fail on a typo before any work
    names_pre = [Path(p).stem for p in config.precomputed]
    clash = sorted(set(names_pre) & set(config.encoders)) or sorted(
        {n for n in names_pre if names_pre.count(n) > 1}
    )
    if clash:
        raise UserError(f"two audio features would be written as features/{clash[0]}.npy")
    if not paths.audio.is_file():
        raise UserError(f"dataset {paths.root} has no audio.wav: rerun `avatar3d preprocess`")
    audio = A.load_audio(paths.audio)  # [S]
    n = manifest.num_frames
    if len(audio) != n * SAMPLES_PER_FRAME:
        raise UserError(
            f"{paths.audio} has {len(audio)} samples, expected {n} frames x {SAMPLES_PER_FRAME} = "
            f"{n * SAMPLES_PER_FRAME}: rerun `avatar3d preprocess`"
        )
    paths.features_dir.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict] = {}
    for name in config.encoders:
        t0 = time.perf_counter()
        feats = A.encode(name, audio, device=config.device)  # [N, ...]
        _save(paths.features(name), feats)
        entry = {
            "shape": list(feats.shape),
            "seconds": round(time.perf_counter() - t0, 3),
            "mean": float(feats.mean()),
            "std": float(feats.std()),
        }
        if name == "mel":
            # A frame is silent when its loudest mel band is below -60 dB re full scale.
            entry["silent_fraction"] = float((feats.max(axis=(1, 2)) < (-6 + 4) / 4).mean())
            entry["av_offset"] = measure_av_offset(paths, feats)
        stats[name] = entry
    for src, name in zip(config.precomputed, names_pre):
        t0 = time.perf_counter()
        feats = A.load_precomputed(Path(src), n)
        _save(paths.features(name), feats)
        stats[name] = {
            "shape": list(feats.shape),
            "seconds": round(time.perf_counter() - t0, 3),
            "mean": float(feats.mean()),
            "std": float(feats.std()),
            "source": str(src),
        }
    return stats

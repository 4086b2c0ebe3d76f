"""``avatar3d eval RUN [--audio WAV]``: one ruler for an avatar's quality, as JSON plus a plot.

Self-driven (the val split of the run's own dataset, frames never trained on):
    PSNR, SSIM and LMD from :func:`avatar3d.drive.val.val_metrics` (tracked blendshapes drive the avatar),
    and the Pearson r between the *rendered* mouth opening and the true one (the tracker's
    landmarks on the real val frames). The rendered opening is measured by running the face
    tracker on the rendered frames, so the ruler does not trust the model. It is measured twice:
    driven by the tracked blendshapes, and driven by the clip's own audio through the prior
    (:mod:`avatar3d.drive.render`'s code path). On the val frames whose mouth is as shut as the
    silence bound (``shut_*``) it also reports the rendered opening beside the real frames' at the
    fit resolution: whether the avatar itself can shut its mouth, with the prior out of the way.
Cross-driven (``--audio``):
    the frames :mod:`avatar3d.drive.render` would write for that audio (same code), the tracker on them,
    and :func:`avatar3d.drive.sync.lagged_correlation` of their mouth opening against
    :func:`avatar3d.drive.sync.speech_envelope` of the audio (best r and its lag, over the frames with
    sound: :func:`speech_sync`), beside the same
    measure on the real clip with its own audio (the reference); the mouth opening in the audio's
    silent frames against the 10th percentile of the training frames' opening, both as tracked
    on the real frames and re-measured on training frames shown at the fit resolution (the head
    window downsampled to the avatar's render size and pasted back, as render does: the tracker
    reads a blurred shut mouth as slightly open, so that is the fair bound for a low-resolution
    avatar); and neck/torso
    flicker (:func:`avatar3d.drive.sync.flicker` inside the TORSO label) of the rendered frames against
    the real video's. ``silent_settled_*`` leave out the last silent frames before speech resumes,
    whose look-ahead (the prior's) already hears it; their median is the mouth's opening during the
    silence, their max the worst single frame (single frames of a shut rendered mouth scatter by
    about +-0.002, a quarter of a pixel at 512 px: the tracker's resolution on a shut mouth).

Articulation (:mod:`avatar3d.drive.articulation`), under ``articulation`` in ``cross_driven`` and
in ``real_clip`` (the clip with its own audio: the ceiling), twice there: ``articulation`` reads
the tracked frames as they are, ``articulation_fit_resolution`` reads every frame at the fit
resolution, as the avatar's frames are read. The mouth opening's and jawOpen's spread while there
is sound, and for English audio (``--language``, ``--clip-language``) the phone measures: bilabial
closure rate against the speaker's closed level (the training p10), open-vowel opening within the
speaker's p5-p95 range, and the mouth's timing at those phones. The avatar's measures and their
``*_vs_real`` ratios use the fit-resolution reading on both sides: levels, range and the ceiling
(the resolution moves the closure rate a lot: CNN's own clip closes on 0.52 of its /p b m/ read at
full size, 0.81 read at 256 px; BENCHMARKS.md). The self-driven val frames add the ratio of the
audio-driven opening's spread to the real val frames' read at the fit resolution. The loudness
correlation (``sync_r``) stays, for what it is: a mouth that flaps with loudness scores well on it.

Seams (:mod:`avatar3d.drive.seams`), under ``seams`` in ``self_driven`` (the val frames driven by
their tracked motion) and ``cross_driven``: the seam ratio along the jaw and neck, the ghost area
(the base frame's head left uncovered), the hole share of the upper face, composited as render
composites; cross-driven adds how many frames' motion codes left the training range.

Writes ``-o`` (default RUN/eval.json), a PNG of mouth opening over time beside it (same name,
``.png``; bilabials and open vowels marked) and a contact sheet of the worst frames for seams and
ghosts (``NAME_seams.png``), all atomically. The real clip's measures that read every dataset
frame are kept in ``RUN/eval_clip_cache.json`` (:func:`clip_frame_measures`), so the next eval of
the run, with another audio, skips them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro

from avatar3d.core.dataset import DatasetPaths, Label, load_tracks
from avatar3d.core.runs import RunInfo
from avatar3d.core.scene import Scene, WindowFrame
from avatar3d.device import resolve_device
from avatar3d.drive.articulation import opening_spread, phone_measures, ratio
from avatar3d.drive.metrics import tracker_upscale
from avatar3d.drive.sync import pearson
from avatar3d.drive.val import to_u8

SILENCE_DB = -60.0  # speech-band envelope below this (dB) counts as a silent frame
DETECT_CHUNK = 100  # frames handed to the tracker at a time (bounds memory for long audio)


@dataclass(frozen=True)
class EvalConfig:
    """Measure a fitted avatar: held-out image metrics, mouth sync with new audio, torso flicker."""

    run: tyro.conf.Positional[Path]
    """Run folder (from `avatar3d fit`)."""
    audio: Path | None = None
    """Driving audio for the cross-driven measures (any format); none = self-driven only."""
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """JSON to write (default RUN/eval.json); the plot goes beside it as .png."""
    max_lag: int = 5
    """Largest audio/mouth lag searched, in frames (either direction). Keep it under half the
    speech rhythm's period: the mouth/envelope correlation of fluent speech is periodic in the
    lag (a syllable lasts about 9 frames), and a wider search picks an alias a whole syllable
    away (BENCHMARKS.md, render and eval)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device to render on; auto = cuda when available, else cpu."""
    language: str = "en"
    """Language of the driving audio; the phone measures need English ("en") and are left out otherwise."""
    clip_language: str = "en"
    """Language of the run's own clip (the real reference's phone measures)."""
    progress: bool = True
    """Show a progress bar."""


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _nanstat(fn, x: np.ndarray, *args) -> float | None:
    """``fn(x[finite], *args)``; None when no value is finite (no face found anywhere)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return _num(fn(x, *args)) if len(x) else None


def openings_of(frames: list[np.ndarray], upscale: int = 1) -> np.ndarray:
    """Run the tracker on ``[H, W, 3] uint8`` frames: mouth opening per frame. [N] (NaN = no face)"""
    from avatar3d.drive.metrics import detect_landmarks
    from avatar3d.drive.sync import mouth_opening

    if not frames:
        return np.zeros(0)
    return mouth_opening(detect_landmarks(frames, upscale=upscale))


class StreamedOpenings:
    """Mouth openings of a stream of frames, tracked DETECT_CHUNK frames at a time (bounds memory)."""

    def __init__(self):
        self._chunk: list[np.ndarray] = []
        self._done: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        self._chunk.append(frame)
        if len(self._chunk) == DETECT_CHUNK:
            self._done.append(openings_of(self._chunk))
            self._chunk = []

    def values(self) -> np.ndarray:
        """[N] openings of every frame added so far (NaN = no face)."""
        if self._chunk:
            self._done.append(openings_of(self._chunk))
            self._chunk = []
        return np.concatenate(self._done) if self._done else np.zeros(0)


def self_driven(
    avatar, scene: Scene, val_frames: dict[int, WindowFrame], prior, device, silence_bound: float | None,
    clip_audio: np.ndarray,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Val-split metrics (see module docstring) and the opening curves for the plot.
    val_frames: the val frames in the window; silence_bound: the training frames'
    10th-percentile opening (:func:`real_reference`'s ``train_opening_p10``), None where no
    training frame has a face; clip_audio: the dataset's 16 kHz audio [S]."""
    from avatar3d.core.avatar import composite
    from avatar3d.drive.render import Driven, audio_features_for, motion_from_audio, render_heads
    from avatar3d.drive.sync import mouth_opening
    from avatar3d.drive.val import val_metrics

    metrics, preds = val_metrics(avatar, scene, val_frames.__getitem__, device)
    up = tracker_upscale(scene.window.size)
    true = mouth_opening(scene.landmarks[scene.val])  # tracked landmarks of the real val frames
    val = np.asarray(scene.val)
    true_fit = openings_of([val_frames[int(i)].image.numpy() for i in val], up)  # the same, read at the fit resolution
    tracked = openings_of([to_u8(p) for p in preds], up)

    # the same val frames driven by the clip's own audio through the prior
    n = scene.motion.shape[0]
    bs = motion_from_audio(prior, clip_audio, n, scene.motion.numpy())  # [N, 52]
    feats = audio_features_for(avatar, clip_audio, n)
    driven = Driven(val, torch.from_numpy(bs[val]), None if feats is None else feats[val])
    frames = []
    for i, rgba in zip(val, render_heads(avatar, scene, driven, device)):
        frames.append(to_u8(composite(rgba, val_frames[int(i)].background.float() / 255).clamp(0, 1)))
    audio_driven = openings_of(frames, up)

    out = {k: metrics.get(k) for k in ("frames", "psnr", "ssim", "psnr_head", "ssim_head", "lmd_px", "lmd_truth_px")}
    out["mouth_opening_r_tracked_motion"] = _num(pearson(tracked, true))
    out["mouth_opening_r_audio_driven"] = _num(pearson(audio_driven, true))
    out["opening_spread_ratio_audio_driven"] = ratio(opening_spread(audio_driven), opening_spread(true_fit))
    out["rendered_frames_with_face"] = int(np.isfinite(tracked).sum())
    out.update(shut_val_openings(silence_bound, true, true_fit, tracked, audio_driven))
    out["seams"], seams = val_seams(avatar, scene, device)
    curves = {"val_true": true, "val_tracked_motion": tracked, "val_audio_driven": audio_driven, "val_seams": seams}
    return {k: _num(v) if isinstance(v, float) else v for k, v in out.items()}, curves


def val_seams(avatar, scene: Scene, device):
    """:mod:`avatar3d.drive.seams` on the val frames driven by their tracked motion, composited as
    render composites (at the dataset's frame size): the measures (with how many val frames' codes
    and poses lie outside the training frames' range) and the :class:`~avatar3d.drive.seams.SeamMeter`."""
    from avatar3d.drive.render import Driven, FrameBases, render_composites
    from avatar3d.drive.seams import SeamMeter, codes_out_of_range, measure_composites, poses_out_of_range

    val = np.asarray(scene.val)
    driven = Driven(val, scene.motion[val], None if scene.audio is None else scene.audio[val])
    bases = FrameBases(scene, val, keep_frames=True)
    meter = SeamMeter(scene.frame_size, scene.window.side / scene.window.size)
    for _ in measure_composites(meter, scene, bases, render_composites(avatar, scene, driven, bases, device)):
        pass
    train = np.asarray(scene.train)
    out = meter.result()
    out["codes_out_of_training_range_frames"] = codes_out_of_range(scene.motion[val].numpy(), scene.motion[train].numpy())
    out["poses_out_of_training_range_frames"] = poses_out_of_range(scene.R[val].numpy(), scene.R[train].numpy())
    return out, meter


def tracked_openings(tracks: dict) -> np.ndarray:
    """[N] mouth opening of the clip's frames from the tracker's landmarks (NaN where it lost the face)."""
    from avatar3d.drive.sync import mouth_opening

    return np.where(tracks["valid"].astype(bool), mouth_opening(tracks["landmarks"]), np.nan)


def shut_val_openings(
    p10: float | None, true: np.ndarray, true_fit: np.ndarray, tracked: np.ndarray, audio_driven: np.ndarray,
) -> dict:
    """Can the avatar shut its mouth? The val frames whose true opening is at most ``p10`` (the
    training frames' 10th percentile: the silence bound), and on them the median opening the
    tracker reads on the real frame at the fit resolution (``true_fit``: what a perfect avatar
    would score), on the avatar driven by the tracked motion (the prior plays no part) and driven
    by the clip's audio. true, true_fit, tracked, audio_driven: [V] openings of the val frames."""
    shut = np.isfinite(true) & (true <= p10) if p10 is not None else np.zeros(len(true), bool)
    return {
        "shut_val_frames": int(shut.sum()),
        "shut_opening_truth_fit_resolution": _nanstat(np.median, true_fit[shut]),
        "shut_opening_tracked_motion": _nanstat(np.median, tracked[shut]),
        "shut_opening_audio_driven": _nanstat(np.median, audio_driven[shut]),
    }


def _flicker_accumulate(prev: np.ndarray | None, frame: np.ndarray, prev_m, mask, acc: list[float]) -> None:
    """Add one frame pair to a running sync.flicker (weighted by the pair's region size)."""
    from avatar3d.drive.sync import flicker

    if prev is None:
        return
    region = int((prev_m & mask).sum()) * 3
    if region:
        acc[0] += flicker(np.stack([prev, frame]), np.stack([prev_m, mask])) * region
        acc[1] += region


def speech_sync(opening: np.ndarray, envelope: np.ndarray, max_lag: int):
    """Lagged correlation of mouth opening [N] with the speech envelope [N] (dB) over the frames
    with sound: silent frames (envelope < SILENCE_DB) are left out, so a stretch of digital
    silence (-100 dB) cannot dominate the correlation; silence is judged on its own
    (``silent_opening_*``)."""
    from avatar3d.drive.sync import lagged_correlation

    envelope = np.where(np.asarray(envelope) < SILENCE_DB, np.nan, envelope)
    return lagged_correlation(opening, envelope, max_lag=max_lag)


def articulation_of(opening: np.ndarray, envelope: np.ndarray, jaw: np.ndarray, audio16: np.ndarray,
                    language: str, closed: float | None, lo: float | None, hi: float | None,
                    phones: list | None = None) -> tuple[dict, list]:
    """:mod:`avatar3d.drive.articulation` on one clip: the opening's and jawOpen's spread over the
    frames with sound, and the phone measures when the language allows (else why not). opening,
    envelope (dB), jaw: [N]; closed/lo/hi: the speaker's closed level and p5/p95 opening; phones:
    ``audio16``'s phone segments when already found (another reading of the same clip)."""
    from avatar3d.audio.phones import phone_segments, phones_unavailable_reason

    n = min(len(opening), len(envelope), len(jaw))
    sounding = np.asarray(envelope[:n]) >= SILENCE_DB
    out = {"opening_spread": _num_or_none(opening_spread(opening[:n], sounding)),
           "jaw_spread": _num_or_none(opening_spread(jaw[:n], sounding))}
    reason = phones_unavailable_reason(language)
    if reason is None and None in (closed, lo, hi):
        reason = "no tracked training frames to set the speaker's closed level and range"
    found = []
    if reason is None:
        found = phone_segments(audio16, language) if phones is None else phones
        out.update(phone_measures(opening[:n], found, closed, lo, hi))
    else:
        out["phone_measures_skipped"] = reason
    return out, found


def _num_or_none(v):
    return None if v is None else _num(v)


CLIP_CACHE_VERSION = 2  # bump when clip_frame_measures measures differently


def _clip_cache_key(scene: Scene) -> dict:
    """What :func:`clip_frame_measures` depends on: the dataset's files (manifest content, the
    size and time of its frames, masks, tracks and plate), the window and the train split."""
    import dataclasses
    import hashlib

    paths = DatasetPaths(scene.data_dir)
    files = {}
    for p in (paths.frames, paths.masks, paths.tracks, paths.background):
        st = p.stat() if p.exists() else None
        files[p.name] = None if st is None else [st.st_size, st.st_mtime_ns]
    return {
        "version": CLIP_CACHE_VERSION,
        "dataset": str(Path(scene.data_dir).resolve()),
        "manifest_sha256": hashlib.sha256(paths.manifest.read_bytes()).hexdigest(),
        "files": files,
        "window": dataclasses.asdict(scene.window),
        "train_sha256": hashlib.sha256(np.asarray(scene.train, np.int64).tobytes()).hexdigest(),
    }


def clip_frame_measures(scene: Scene, cache: Path | None = None) -> dict:
    """The real clip's measures that read every dataset frame: its torso flicker, and every frame's
    mouth opening as the tracker reads it at the fit resolution (``opening_fit_resolution`` [N],
    None where it finds no face: the head window downsampled to the avatar's size and pasted back,
    as render shows it, so the real clip is read as the avatar's frames are). With
    ``cache`` (a JSON file), a result whose key (:func:`_clip_cache_key`) still matches is read
    back instead, so evaluating one run on several driving audios reads the clip once; anything
    else there (missing, another key, unreadable) is measured anew and written atomically."""
    import json

    from avatar3d.core.scene import WindowCropper, iter_dataset_frames, read_plate
    from avatar3d.drive.render import paste
    from avatar3d.fsutil import write_json

    key = _clip_cache_key(scene)
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                return stored["measures"]
        except (OSError, ValueError, AttributeError, KeyError):
            pass  # an unreadable cache is measured anew
    crop = WindowCropper(scene.window, read_plate(scene.data_dir, scene.frame_size))  # its image() only
    matched = StreamedOpenings()
    acc = [0.0, 0]
    prev = prev_m = None
    for i, frame, labels in iter_dataset_frames(scene.data_dir):
        m = labels == Label.TORSO
        _flicker_accumulate(prev, frame, prev_m, m, acc)
        prev, prev_m = frame, m
        image = crop.image(frame)
        window_rgba = torch.cat([image.float() / 255, torch.ones(*image.shape[:2], 1)], -1)
        matched.add(paste(window_rgba, frame, scene.window))
    measures = {
        "torso_flicker": _num(acc[0] / acc[1]) if acc[1] else None,
        "opening_fit_resolution": [_num(v) for v in matched.values()],
    }
    if cache is not None:
        try:
            write_json(cache, {"key": key, "measures": measures})
        except OSError:
            pass  # a read-only run: measured, not kept
    return measures


def real_reference(
    scene: Scene, max_lag: int, opening: np.ndarray, clip_audio: np.ndarray, language: str, cache: Path | None = None
) -> tuple[dict, dict]:
    """The measures on the real clip with its own audio (sync, articulation: its ceiling, from the
    tracked frames and from every frame read at the fit resolution), and its torso flicker.
    opening: [N] :func:`tracked_openings` of the clip; clip_audio: its 16 kHz audio [S]; language:
    the clip's (phone measures need English); cache: :func:`clip_frame_measures`'s."""
    from avatar3d.core.vocab import blendshape_index
    from avatar3d.drive.sync import speech_envelope

    env = speech_envelope(clip_audio)
    lc = speech_sync(opening, env, max_lag)
    train = np.asarray(scene.train)
    train_open = opening[train]
    frames = clip_frame_measures(scene, cache)
    fit_open = np.array([np.nan if v is None else v for v in frames["opening_fit_resolution"]], np.float64)
    train_fit = fit_open[train]
    out = {
        "sync_r": _num(lc.best_r), "sync_lag": lc.best_lag, "sync_r_at_zero": _num(lc.r_at_zero),
        "torso_flicker": frames["torso_flicker"],
        "train_opening_p10": _nanstat(np.percentile, train_open, 10),
        "train_opening_median": _nanstat(np.median, train_open),
        "train_opening_p5": _nanstat(np.percentile, train_open, 5),
        "train_opening_p95": _nanstat(np.percentile, train_open, 95),
        "train_opening_p10_fit_resolution": _nanstat(np.percentile, train_fit, 10),
        "train_opening_p5_fit_resolution": _nanstat(np.percentile, train_fit, 5),
        "train_opening_p95_fit_resolution": _nanstat(np.percentile, train_fit, 95),
        "train_frames_fit_resolution": int(np.isfinite(train_fit).sum()),
    }
    jaw = scene.motion[:, blendshape_index("jawOpen")].numpy()
    out["articulation"], phones = articulation_of(
        opening, env, jaw, clip_audio, language,
        out["train_opening_p10"], out["train_opening_p5"], out["train_opening_p95"])
    out["articulation_fit_resolution"], _ = articulation_of(
        fit_open, env, jaw, clip_audio, language, out["train_opening_p10_fit_resolution"],
        out["train_opening_p5_fit_resolution"], out["train_opening_p95_fit_resolution"], phones)
    return out, {"real_opening": opening, "real_envelope": env, "real_phones": phones}


def cross_driven(avatar, scene: Scene, prior, audio16: np.ndarray, device, max_lag: int, progress: bool):
    """Render the audio as `avatar3d render` would; tracker, sync and torso flicker on the frames."""
    from tqdm import tqdm

    from avatar3d.drive.render import FrameBases, drive, num_output_frames, render_composites
    from avatar3d.drive.seams import SeamMeter, codes_out_of_range, measure_composites
    from avatar3d.drive.sync import speech_envelope

    num = num_output_frames(len(audio16))
    driven = drive(avatar, scene, prior, audio16, num, "clip")
    bases = FrameBases(scene, driven.trajectory, keep_frames=True)
    openings = StreamedOpenings()
    meter = SeamMeter(scene.frame_size, scene.window.side / scene.window.size)
    acc = [0.0, 0]
    prev = prev_m = None
    bar = tqdm(total=num, disable=not progress, desc="eval", unit="frame", dynamic_ncols=True)
    composites = measure_composites(meter, scene, bases, render_composites(avatar, scene, driven, bases, device))
    for i, frame, _ in composites:
        m = bases[i].labels == Label.TORSO
        _flicker_accumulate(prev, frame, prev_m, m, acc)
        prev, prev_m = frame, m
        openings.add(frame)
        bar.update(1)
    bar.close()
    opening = openings.values()
    env = speech_envelope(audio16)[:num]
    lc = speech_sync(opening, env, max_lag)
    silent = env < SILENCE_DB
    # settled: silent frames whose look-ahead is silent too (the prior hears speech coming
    # ``lookahead`` frames early, so the last silent frames may start opening, as a speaker's do)
    ahead = int(getattr(prior, "lookahead", 0))
    settled = silent.copy()
    for k in range(1, ahead + 1):
        settled[:-k] &= silent[k:]  # past the end the prior hears silence (padding)
    out = {
        "frames": num, "rendered_frames_with_face": int(np.isfinite(opening).sum()),
        "sync_r": _num(lc.best_r), "sync_lag": lc.best_lag, "sync_r_at_zero": _num(lc.r_at_zero),
        "torso_flicker": _num(acc[0] / acc[1]) if acc[1] else None,
        "silent_frames": int(silent.sum()),
        "silent_opening_median": _nanstat(np.median, opening[silent]),
        "silent_opening_max": _nanstat(np.max, opening[silent]),
        "silent_settled_frames": int(settled.sum()),
        "silent_settled_opening_median": _nanstat(np.median, opening[settled]),
        "silent_settled_opening_max": _nanstat(np.max, opening[settled]),
        "seams": meter.result(),
        "codes_out_of_training_range_frames": codes_out_of_range(
            driven.blendshapes.numpy(), scene.motion[np.asarray(scene.train)].numpy()),
    }
    from avatar3d.core.vocab import blendshape_index

    jaw = driven.blendshapes[:, blendshape_index("jawOpen")].numpy()
    return out, {"cross_opening": opening, "cross_envelope": env, "cross_jaw": jaw, "cross_seams": meter}


def _label_phones(ax, phones: list, seconds: float) -> None:
    """Bilabials (red) and open vowels (blue) written under the opening curve, at their centres."""
    from avatar3d.audio.phones import BILABIALS, OPEN_VOWELS

    for p in phones:
        if p.centre > seconds or (p.name not in BILABIALS and p.name not in OPEN_VOWELS):
            continue
        colour = "C3" if p.name in BILABIALS else "C0"
        ax.axvspan(p.start, p.end, color=colour, alpha=0.08, lw=0)
        ax.text(p.centre, 0.02, p.name.lower(), transform=ax.get_xaxis_transform(), fontsize=5, color=colour,
                ha="center", va="bottom")


def write_plot(path: Path, curves: dict[str, np.ndarray], title: str) -> None:
    """Mouth opening over time: val (true vs rendered), cross-driven and real clip vs envelope,
    with the bilabials and open vowels marked under the curves when phones were found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avatar3d.fsutil import atomic_path

    rows = [("val", "self-driven val frames")]
    if "cross_opening" in curves:
        rows.append(("cross", "cross-driven (new audio)"))
    rows.append(("real", "real clip, own audio"))
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 2.6 * len(rows)), squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], rows):
        if key == "val":
            t = np.arange(len(curves["val_true"])) / 25
            ax.plot(t, curves["val_true"], "k-", lw=1.5, label="true (tracked)")
            ax.plot(t, curves["val_tracked_motion"], "C0-", lw=1, label="rendered, tracked motion")
            ax.plot(t, curves["val_audio_driven"], "C3-", lw=1, label="rendered, audio -> prior")
        else:
            o, e = curves[f"{key}_opening"], curves[f"{key}_envelope"]
            n = min(len(o), len(e), 25 * 60)  # at most one minute shown
            t = np.arange(n) / 25
            ax.plot(t, o[:n], "C3-", lw=1, label="mouth opening (tracker)")
            _label_phones(ax, curves.get(f"{key}_phones") or [], n / 25)
            ax2 = ax.twinx()
            ax2.plot(t, e[:n], "C7-", lw=0.7, alpha=0.7, label="speech envelope (dB)")
            ax2.set_ylabel("dB")
            ax2.legend(loc="upper right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("opening")
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def run_eval(config: EvalConfig) -> dict:
    from avatar3d.audio.features import load_audio
    from avatar3d.core.avatar import load_avatar
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene, window_frames
    from avatar3d.drive.render import check_output, load_driving_audio, load_run_prior
    from avatar3d.drive.seams import write_sheets
    from avatar3d.fsutil import write_json

    t0 = time.time()
    info: RunInfo = open_run(config.run)
    out = check_output(config.output if config.output is not None else info.paths.eval_json, ".json")
    audio16 = load_driving_audio(config.audio)[0] if config.audio is not None else None
    device = resolve_device(config.device)

    avatar = load_avatar(info.run, device)
    scene = load_run_scene(info, avatar.audio_features)
    prior, prior_path = load_run_prior(info.run, device)

    result: dict = {"run": str(info.run), "dataset": str(info.data),
                    "prior": str(prior_path) if prior_path else "shipped"}
    clip_opening = tracked_openings(load_tracks(info.data))  # [N] the real clip's, from its tracks
    clip_audio = load_audio(DatasetPaths(scene.data_dir).audio)  # read once: sync, articulation, self-driven
    real, real_curves = real_reference(scene, config.max_lag, clip_opening, clip_audio, config.clip_language,
                                        info.paths.eval_clip_cache)
    result["self_driven"], curves = self_driven(
        avatar, scene, window_frames(scene, scene.val), prior, device, real["train_opening_p10"], clip_audio
    )
    result["real_clip"] = real
    curves.update(real_curves)
    if audio16 is not None:
        cross, cross_curves = cross_driven(avatar, scene, prior, audio16, device, config.max_lag, config.progress)
        curves.update(cross_curves)
        real = result["real_clip"]
        if cross["sync_r"] is not None and real["sync_r"]:
            cross["sync_r_vs_real"] = cross["sync_r"] / real["sync_r"]
        if cross["torso_flicker"] is not None and real["torso_flicker"]:
            cross["torso_flicker_vs_real"] = cross["torso_flicker"] / real["torso_flicker"]
        cross["audio"] = str(config.audio)
        # the avatar's frames are read at the fit resolution: so are its closed level, range and ceiling
        art, curves["cross_phones"] = articulation_of(
            cross_curves["cross_opening"], cross_curves["cross_envelope"], cross_curves["cross_jaw"], audio16,
            config.language, real["train_opening_p10_fit_resolution"], real["train_opening_p5_fit_resolution"],
            real["train_opening_p95_fit_resolution"])
        ref = real["articulation_fit_resolution"]
        for key in ("opening_spread", "jaw_spread", "bilabial_closure_rate", "open_vowel_opening"):
            if key in art:
                art[f"{key}_vs_real"] = ratio(art.get(key), ref.get(key))
        cross["articulation"] = art
        result["cross_driven"] = cross
    result["seconds"] = round(time.time() - t0, 1)
    write_json(out, result)
    png = out.with_suffix(".png")
    sheets = [curves.pop(k).sheet(f"{info.run.name}: {label}")
              for k, label in (("val_seams", "val frames, tracked motion"), ("cross_seams", "cross-driven"))
              if k in curves]
    write_plot(png, curves, f"{info.run.name}: mouth opening over time")
    write_sheets(out.with_name(out.stem + "_seams.png"), sheets)

    print(summary_line(result, out, png))
    return result


def summary_line(result: dict, out: Path, png: Path) -> str:
    """The one line `avatar3d eval` prints: the headline numbers of ``result`` (run_eval's JSON)."""
    s = result["self_driven"]
    line = (f"avatar3d eval: {out}  val PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f}, "
            f"LMD {_fmt(s['lmd_px'], 2)} px, mouth r "
            f"{_fmt(s['mouth_opening_r_tracked_motion'])} (tracked) / {_fmt(s['mouth_opening_r_audio_driven'])} (audio), "
            f"shut val mouths open {_fmt(s['shut_opening_tracked_motion'], 4)} (real at this resolution "
            f"{_fmt(s['shut_opening_truth_fit_resolution'], 4)}, {s['shut_val_frames']} frames)"
            f"{_seams_clause(s.get('seams'))}")
    if "cross_driven" in result:
        c, real = result["cross_driven"], result["real_clip"]
        line += (f"; cross sync r {_fmt(c['sync_r'])} at lag {c['sync_lag']} (real {_fmt(real['sync_r'])}"
                 f" at {real['sync_lag']}), torso flicker {_fmt(c['torso_flicker'])} "
                 f"(real {_fmt(real['torso_flicker'])})")
        art, ref = c.get("articulation", {}), real.get("articulation_fit_resolution", {})
        line += _seams_clause(c.get("seams"))
        line += (f", opening spread {_fmt(art.get('opening_spread_vs_real'), 2)}x real")
        if art.get("bilabial_closure_rate") is not None:
            line += (f", bilabial closure {_fmt(art['bilabial_closure_rate'], 2)} (real "
                     f"{_fmt(ref.get('bilabial_closure_rate'), 2)}), open vowels {_fmt(art.get('open_vowel_opening'), 2)}"
                     f" of the range (real {_fmt(ref.get('open_vowel_opening'), 2)})")
        if c["silent_settled_frames"]:
            line += (f", silent mouth open {_fmt(c['silent_settled_opening_median'], 4)} over "
                     f"{c['silent_settled_frames']} frames (bound: training p10 {_fmt(real['train_opening_p10'], 4)}, "
                     f"{_fmt(real['train_opening_p10_fit_resolution'], 4)} at this resolution)")
    return line + f"; plot {png}"


def _seams_clause(seams: dict | None) -> str:
    if not seams or not seams.get("frames"):
        return ""
    return (f", seam {_fmt(seams['seam_ratio'], 2)}x, ghost {seams['ghost_head_area_px_mean']:.0f} px "
            f"({seams['ghost_frames']} frames), holes in {seams['hole_frames']} frames")


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"

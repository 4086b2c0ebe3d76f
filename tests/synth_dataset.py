"""A tiny synthetic dataset with known geometry, for the parse/background/contact-sheet tests.

A cartoon head (skin ellipse, dark hair cap, open mouth) and shoulders over a smooth static
background; the head slides sideways over the clip. Landmarks are placed exactly: the face-oval
indices on the face ellipse, the inner-lip indices on the mouth ellipse, every other landmark at
the face centre. Pose: a pinhole camera and a head at 40 cm, turned by the same slide.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar3d.core import video
from avatar3d.core.dataset import FORMAT_VERSION, DatasetPaths, Manifest, default_split
from avatar3d.fsutil import write_json
from avatar3d.preprocess.parse import FACE_OVAL, INNER_LIPS

SKIN = (225, 170, 140)
HAIR = (50, 35, 25)
MOUTH = (90, 10, 20)
SHIRT = (30, 40, 120)


@dataclass(frozen=True)
class FaceLayout:
    """Where the cartoon face of one frame is, in pixels."""

    center: tuple[float, float]  # face ellipse centre (x, y)
    axes: tuple[float, float]  # face ellipse half-width, half-height
    mouth_center: tuple[float, float]
    mouth_axes: tuple[float, float]  # half-width, half-height of the mouth opening


def layout(size: int, i: int, n: int, mouth_open: float = 1.0) -> FaceLayout:
    shift = (i / max(n - 1, 1) - 0.5) * 0.2 * size
    cx, cy = 0.5 * size + shift, 0.42 * size
    a, b = 0.16 * size, 0.22 * size
    return FaceLayout((cx, cy), (a, b), (cx, cy + 0.55 * b), (0.4 * a, 0.12 * b * mouth_open + 1e-3))


def landmarks_for(face: FaceLayout) -> np.ndarray:
    """``[478, 3]`` landmarks in crop pixels for a cartoon face."""
    lm = np.zeros((478, 3), dtype=np.float32)
    lm[:, 0], lm[:, 1] = face.center
    for k, idx in enumerate(FACE_OVAL):  # clockwise from the forehead (10) in image coords
        th = -np.pi / 2 + 2 * np.pi * k / len(FACE_OVAL)
        lm[idx, :2] = face.center[0] + face.axes[0] * np.cos(th), face.center[1] + face.axes[1] * np.sin(th)
    for k, idx in enumerate(INNER_LIPS):  # from the image-left corner (78) along the lower lip
        th = np.pi - 2 * np.pi * k / len(INNER_LIPS)
        lm[idx, :2] = (face.mouth_center[0] + face.mouth_axes[0] * np.cos(th),
                       face.mouth_center[1] + face.mouth_axes[1] * np.sin(th))
    lm[1, :2] = face.center  # nose tip
    return lm


def background_image(size: int) -> np.ndarray:
    """A smooth static scene ``[size, size, 3] uint8`` (gradients and soft stripes)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = 60 + 120 * x
    g = 140 + 60 * np.sin(6.0 * y)
    b = 200 - 100 * y * x
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def draw_frame(size: int, face: FaceLayout, background: np.ndarray) -> np.ndarray:
    import cv2

    img = background.copy()
    cx, cy = face.center
    a, b = face.axes
    # shoulders: a wide rounded block from below the chin to the bottom edge
    cv2.ellipse(img, (int(cx), int(size * 1.05)), (int(2.4 * a), int(0.45 * size)), 0, 0, 360, SHIRT, -1)
    cv2.rectangle(img, (int(cx - 0.45 * a), int(cy + 0.8 * b)), (int(cx + 0.45 * a), int(cy + 1.4 * b)), SKIN, -1)
    cv2.ellipse(img, (int(cx), int(cy - 0.15 * b)), (int(1.15 * a), int(1.0 * b)), 0, 0, 360, HAIR, -1)
    cv2.ellipse(img, (int(cx), int(cy)), (int(a), int(b)), 0, 0, 360, SKIN, -1)
    mx, my = face.mouth_center
    ma, mb = face.mouth_axes
    cv2.ellipse(img, (int(mx), int(my)), (max(1, int(ma)), max(1, int(mb))), 0, 0, 360, MOUTH, -1)
    return img


def make_dataset(root: Path, n: int = 12, size: int = 128, lost: tuple[int, ...] = (),
                 interpolated: tuple[int, ...] = ()) -> tuple[DatasetPaths, Manifest]:
    """Write frames.mp4, tracks.npz and manifest.json of a synthetic clip into ``root``."""
    paths = DatasetPaths(Path(root))
    paths.root.mkdir(parents=True, exist_ok=True)
    bg = background_image(size)
    faces = [layout(size, i, n, mouth_open=float(i % 3 != 0)) for i in range(n)]
    video.write_video(paths.frames, (draw_frame(size, f, bg) for f in faces), crf=12)
    lm = np.stack([landmarks_for(f) for f in faces])
    valid = np.ones(n, dtype=bool)
    valid[list(lost) + list(interpolated)] = False
    interp = np.zeros(n, dtype=bool)
    interp[list(interpolated)] = True
    lm[list(lost)] = np.nan
    focal = 1.2 * size
    K = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], np.float32)
    z = 40.0
    t = np.stack([[(f.center[0] - size / 2) * z / focal, (f.center[1] - size / 2) * z / focal, z] for f in faces])
    R = np.repeat(np.diag([1.0, -1.0, -1.0])[None], n, axis=0)  # head y up, z out of the face
    canonical = np.zeros((478, 3), np.float32)
    canonical[10] = (0, 9, 1)
    canonical[152] = (0, -11, -1)
    canonical[1] = (0, -1, 5)
    np.savez_compressed(
        paths.tracks, landmarks=lm, blendshapes=np.full((n, 52), 0.25, np.float32), valid=valid,
        interpolated=interp, K=K, R=R.astype(np.float32), t=t.astype(np.float32), canonical=canonical,
    )
    manifest = Manifest(
        format_version=FORMAT_VERSION, source_name="synthetic.mp4", source_sha256="0" * 64,
        source_fps=25.0, source_duration=n / 25.0, fps=25, size=size, num_frames=n,
        crop=(0, 0, size), split=default_split(n),
    )
    write_json(paths.manifest, manifest.to_json())
    return paths, manifest

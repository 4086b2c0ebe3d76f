"""Is the composite one seamless, solid person? Seam, ghost and hole measures of composited frames.

Each composited frame (the avatar pasted over its base, at the dataset's frame size) is compared
with the dataset frame it was pasted into, using the rendered head's alpha at that size:

- **seam**: the luminance gradient energy (Sobel, squared) in a band of ``SEAM_BAND`` of the frame
  size either side of the rendered outline (alpha 0.5) below the mouth (in the base frame's face
  frame: the jaw, the chin and the neck, where the render meets the body), summed over frames,
  against the same band of the real frames as a perfect avatar of this resolution would show them (the real window shown at the fit resolution
  through the render's alpha, over the real frame: :func:`fit_resolution_reference`):
  ``seam_ratio`` 1 = as much edge as that picture has there; a light line along the jaw or a
  second chin adds edges (a blurred render alone does not lower it below 1, as it would against
  the sharp real frame). ``seam_ratio_frame_p95``: the same per frame, its 95th percentile.
- **ghost**: pixels of the base frame's head (face, hair, inside of the mouth: its labels, eroded
  by the band and one render pixel, the finest a render at the fit resolution can place its
  outline) that the render leaves uncovered (alpha < 0.5). There the composite shows what
  replaced that head (plate, carried-up neck) or, where the labels missed it, the frame's own
  chin: the "second chin" and plate-coloured patches around the ears. Per frame, in dataset pixels;
  ``ghost_frames``: frames with more than ``GHOST_FRAME_PX`` (at 512², scaled with the area).
- **holes**: the share of the base frame's upper face (face label above the mouth corners, eroded
  by twice the band and one render pixel) that the render leaves below alpha 0.5: a face torn open by an expression or
  pose the training frames did not cover. ``hole_frames``: frames with more than ``HOLE_SHARE``.
  Beside it, how many frames asked for a code or pose outside the training frames' range
  (:func:`codes_out_of_range`, :func:`poses_out_of_range`): the face field clamps the code to its
  training range; a pose is drawn as asked.

Beside them, ``psnr_head_labels``: PSNR on the base frames' head labels at the dataset's frame size,
the same pixels whatever the avatar draws (fit's ``psnr_head`` is over what it draws, which grows
with the neck). :class:`SeamMeter` also keeps the worst frames (by seam and by ghost) and draws them side by side
with the real frames (:meth:`SeamMeter.sheet`, :func:`write_sheets`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from avatar3d.core.dataset import HEAD_LABELS, Label
from avatar3d.core.scene import FaceFrame

SEAM_BAND = 0.006  # half-width of the seam band, fraction of the frame side (3 px at 512)
GHOST_FRAME_PX = 25  # a frame with more uncovered head pixels than this (at 512², scaled) has a ghost
HOLE_SHARE = 0.01  # a frame whose upper face is uncovered over more than this share has a hole
WORST = 3  # frames of each kind kept for the sheet
TILE = 256  # side of one crop on the sheet


def _disk(radius: int) -> np.ndarray:
    return np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)


def _luminance_gradient_energy(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] float32 squared Sobel gradient of the luminance (0..1 scale)."""
    import cv2

    y = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    return gx * gx + gy * gy


@dataclass(frozen=True)
class FrameMeasures:
    """One frame's raw measures (see module docstring)."""

    seam_energy: float  # summed over the band, composite
    seam_energy_real: float  # summed over the band, the real frame at the fit resolution
    band_px: int
    ghost_px: int
    hole_share: float | None  # None: no usable landmarks or no upper face in the labels
    head_sq_error: float  # summed squared error (0..1 scale, over RGB) on the base frame's head labels
    head_px: int


def fit_resolution_reference(real: np.ndarray, alpha: np.ndarray, window) -> np.ndarray:
    """What a perfect avatar fitted at ``window.size``² would composite: the real window resampled
    to the fit resolution and back (as :func:`avatar3d.drive.render.paste` upsamples a render),
    through ``alpha`` [H, W], over the real frame [H, W, 3] uint8 -> [H, W, 3] uint8."""
    import torch
    import torch.nn.functional as F

    from avatar3d.core.scene import downsample

    crop = (slice(window.y0, window.y0 + window.side), slice(window.x0, window.x0 + window.side))
    x = torch.from_numpy(np.ascontiguousarray(real[crop])).float()
    if window.size != window.side:
        small = downsample(x, window.size).permute(2, 0, 1)[None]
        x = F.interpolate(small, size=(window.side, window.side), mode="bilinear", align_corners=False)
        x = x[0].permute(1, 2, 0)
    a = alpha[crop][..., None]
    out = real.copy()
    out[crop] = np.clip(np.round(a * x.numpy() + (1 - a) * real[crop]), 0, 255).astype(np.uint8)
    return out


def measure_frame(composite: np.ndarray, real: np.ndarray, reference: np.ndarray, alpha: np.ndarray,
                  labels: np.ndarray, landmarks: np.ndarray | None, render_px: float = 1.0) -> FrameMeasures:
    """The measures of one frame. composite, real (the dataset frame), reference
    (:func:`fit_resolution_reference`): [H, W, 3] uint8; alpha: [H, W] float (the rendered head's
    coverage at the frame's size); labels: [H, W] uint8 of the base frame; landmarks: its
    [478, >=2] tracked landmarks (None: no hole measure); render_px: the size of one rendered pixel
    in these pixels (window side / size)."""
    import cv2

    h = labels.shape[0]
    b = max(2, int(round(SEAM_BAND * h)))
    inside = (alpha >= 0.5).astype(np.uint8)
    band = (cv2.dilate(inside, _disk(b)) > 0) & (cv2.erode(inside, _disk(b)) == 0)
    face = FaceFrame.of(landmarks)
    along = face.coordinates(labels.shape)[0] if face is not None else None
    if face is not None:
        band &= along < face.mouth_height
    e_comp = float(_luminance_gradient_energy(composite)[band].sum()) if band.any() else 0.0
    e_real = float(_luminance_gradient_energy(reference)[band].sum()) if band.any() else 0.0

    head = np.isin(labels, np.array(HEAD_LABELS, np.uint8)).astype(np.uint8)
    r = int(np.ceil(render_px))
    ghost = int(((cv2.erode(head, _disk(b + r)) > 0) & (inside == 0)).sum())
    diff = (composite[head > 0].astype(np.float32) - real[head > 0]) / 255.0
    sq_error = float((diff * diff).sum())

    hole = None
    if face is not None:
        upper = ((labels == Label.FACE) & (along >= face.mouth_height)).astype(np.uint8)
        upper = cv2.erode(upper, _disk(2 * b + r)) > 0
        if upper.any():
            hole = float((inside[upper] == 0).mean())
    return FrameMeasures(e_comp, e_real, int(band.sum()), ghost, hole, sq_error, int(head.sum()))


def _crop_box(landmarks: np.ndarray | None, shape: tuple[int, int]) -> tuple[int, int, int]:
    """x0, y0, side of a square around the jaw and the neck under it (the whole frame without landmarks)."""
    face = FaceFrame.of(landmarks)
    h, w = shape
    if face is None:
        return 0, 0, min(h, w)
    centre = face.origin - face.up * 0.6 * face.scale  # the jaw, the lower ears and the neck under them
    side = int(min(h, w, round(1.9 * face.scale)))
    x0 = int(np.clip(round(centre[0] - side / 2), 0, w - side))
    y0 = int(np.clip(round(centre[1] - side / 2), 0, h - side))
    return x0, y0, side


def measure_composites(meter: "SeamMeter", scene, bases, composites) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Pass ``composites`` (:func:`avatar3d.drive.render.render_composites` over ``bases``, a
    :class:`~avatar3d.drive.render.FrameBases` that keeps its frames) through, measuring each in ``meter``."""
    from avatar3d.drive.render import alpha_in_frame

    for k, (i, frame, head) in enumerate(composites):
        base = bases[i]
        alpha = alpha_in_frame(head, scene.window, scene.frame_size)
        meter.add(frame, base.frame, fit_resolution_reference(base.frame, alpha, scene.window), alpha,
                  base.labels, base.landmarks, name=f"#{k}")
        yield i, frame, head


def codes_out_of_range(codes: np.ndarray, train_codes: np.ndarray, tolerance: float = 0.05) -> int:
    """How many frames' motion codes [N, 52] leave the training frames' range ``train_codes``
    [T, 52] (per channel, by more than ``tolerance``): the field extrapolates there."""
    lo, hi = train_codes.min(0) - tolerance, train_codes.max(0) + tolerance
    return int(((codes < lo) | (codes > hi)).any(1).sum())


class PoseRange:
    """The head rotations a fit saw: ``train_R`` [T, 3, 3], as turns (rotation vectors, degrees)
    from their mean rotation and the largest turn per axis."""

    def __init__(self, train_R: np.ndarray):
        from scipy.spatial.transform import Rotation

        self._mean_inv = Rotation.from_matrix(train_R).mean().inv()
        self.spread = np.abs(self.turns(train_R)).max(0)  # [3] degrees

    def turns(self, R: np.ndarray) -> np.ndarray:
        """[N, 3, 3] -> [N, 3] rotation vectors (degrees) relative to the training mean."""
        from scipy.spatial.transform import Rotation

        return (self._mean_inv * Rotation.from_matrix(R)).as_rotvec(degrees=True)

    def outside(self, R: np.ndarray, tolerance_deg: float = 1.0) -> np.ndarray:
        """[N, 3, 3] -> [N] bool: turned further than any training rotation on some axis (by more
        than ``tolerance_deg``)."""
        return (np.abs(self.turns(R)) > self.spread + tolerance_deg).any(1)


def enclosed_hole_share(alpha: np.ndarray) -> float:
    """The share of a render's silhouette (alpha >= 0.5, its inner gaps filled) that lies under
    alpha 0.5 inside it: holes torn through a head, measured without labels (for poses no frame
    was labelled in). alpha [H, W] -> [0, 1]."""
    from scipy.ndimage import binary_fill_holes

    inside = alpha >= 0.5
    filled = binary_fill_holes(inside)
    return float((filled & ~inside).sum() / max(1, filled.sum()))


def poses_out_of_range(R: np.ndarray, train_R: np.ndarray, tolerance_deg: float = 1.0) -> int:
    """How many head rotations ``R`` [N, 3, 3] lie outside the training rotations ``train_R``
    [T, 3, 3] (:meth:`PoseRange.outside`)."""
    return int(PoseRange(train_R).outside(R, tolerance_deg).sum())


@dataclass
class _Kept:
    score: float
    caption: str
    tile: np.ndarray  # [TILE, 2 * TILE, 3] uint8: composite | real


@dataclass
class SeamMeter:
    """Accumulates :func:`measure_frame` over a sequence (see module docstring)."""

    frame_size: int
    render_px: float = 1.0  # one rendered pixel in frame pixels (window side / size)
    rows: list[FrameMeasures] = field(default_factory=list)
    worst_seam: list[_Kept] = field(default_factory=list)
    worst_ghost: list[_Kept] = field(default_factory=list)

    def add(self, composite: np.ndarray, real: np.ndarray, reference: np.ndarray, alpha: np.ndarray,
            labels: np.ndarray, landmarks: np.ndarray | None, name: str = "") -> FrameMeasures:
        """Measure one frame (arguments of :func:`measure_frame`; ``real``, the dataset frame, is
        shown beside it on the sheet); ``name`` captions it there."""
        m = measure_frame(composite, real, reference, alpha, labels, landmarks, self.render_px)
        self.rows.append(m)
        ratio = m.seam_energy / m.seam_energy_real if m.seam_energy_real > 0 else 1.0
        caption = f"{name} seam {ratio:.2f}x ghost {m.ghost_px}px" + (
            "" if m.hole_share is None else f" hole {100 * m.hole_share:.1f}%")
        for kept, score in ((self.worst_seam, ratio), (self.worst_ghost, float(m.ghost_px))):
            if len(kept) < WORST or score > kept[-1].score:
                kept.append(_Kept(score, caption, self._tile(composite, real, landmarks)))
                kept.sort(key=lambda k: -k.score)
                del kept[WORST:]
        return m

    @staticmethod
    def _tile(composite: np.ndarray, real: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        import cv2

        x0, y0, side = _crop_box(landmarks, composite.shape[:2])
        crops = [cv2.resize(np.ascontiguousarray(im[y0:y0 + side, x0:x0 + side]), (TILE, TILE),
                            interpolation=cv2.INTER_AREA if side > TILE else cv2.INTER_CUBIC)
                 for im in (composite, real)]
        return np.concatenate(crops, 1)

    def result(self) -> dict:
        """The sequence's measures (module docstring) as JSON-ready numbers."""
        if not self.rows:
            return {"frames": 0}
        ec = np.array([r.seam_energy for r in self.rows])
        er = np.array([r.seam_energy_real for r in self.rows])
        ghost = np.array([r.ghost_px for r in self.rows])
        holes = np.array([r.hole_share for r in self.rows if r.hole_share is not None])
        per_frame = ec[er > 0] / er[er > 0]
        sq, px = sum(r.head_sq_error for r in self.rows), 3 * sum(r.head_px for r in self.rows)
        ghost_limit = GHOST_FRAME_PX * (self.frame_size / 512) ** 2
        return {
            "frames": len(self.rows),
            "seam_ratio": float(ec.sum() / er.sum()) if er.sum() > 0 else None,
            "seam_ratio_frame_p95": float(np.percentile(per_frame, 95)) if len(per_frame) else None,
            "seam_band_px_mean": float(np.mean([r.band_px for r in self.rows])),
            "ghost_head_area_px_mean": float(ghost.mean()),
            "ghost_head_area_px_max": int(ghost.max()),
            "ghost_frames": int((ghost > ghost_limit).sum()),
            "ghost_frame_px": round(ghost_limit, 1),
            "hole_share_mean": float(holes.mean()) if len(holes) else None,
            "hole_share_max": float(holes.max()) if len(holes) else None,
            "hole_frames": int((holes > HOLE_SHARE).sum()),
            "psnr_head_labels": float(10 * np.log10(px / sq)) if sq > 0 else None,
        }

    def sheet(self, title: str) -> np.ndarray:
        """The worst frames by seam (top row) and by ghost (bottom row), each composite | real,
        captioned, under ``title``: ``[H, W, 3] uint8`` RGB."""
        import cv2

        blank = np.full((TILE, 2 * TILE, 3), 255, np.uint8)
        rows = []
        for kept in (self.worst_seam, self.worst_ghost):
            tiles = []
            for k in kept + [None] * (WORST - len(kept)):
                tile = blank.copy() if k is None else k.tile.copy()
                caption = np.full((18, tile.shape[1], 3), 255, np.uint8)
                if k is not None:
                    cv2.putText(caption, k.caption, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
                tiles.append(np.pad(np.concatenate([tile, caption], 0), ((2, 2), (2, 2), (0, 0)), constant_values=255))
            rows.append(np.concatenate(tiles, 1))
        head = np.full((24, rows[0].shape[1], 3), 255, np.uint8)
        cv2.putText(head, title + "   (top: worst by seam, bottom: by ghost; each composite | real)", (6, 17),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        return np.concatenate([head] + rows, 0)


def write_sheets(path: Path, sheets: list[np.ndarray]) -> None:
    """:meth:`SeamMeter.sheet` images stacked into one PNG (atomically)."""
    import cv2

    from avatar3d.fsutil import atomic_path

    width = max(s.shape[1] for s in sheets)
    image = np.concatenate([np.pad(s, ((0, 8), (0, width - s.shape[1]), (0, 0)), constant_values=255)
                            for s in sheets], 0)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())

"""contact_sheet.png: one picture a person judges a dataset by, at a glance.

Layout (2048 px wide)::

    header: source, frame count, size, tracking summary, mask colour legend
    row 1:  8 frames spread over the clip, landmarks and head-pose axes drawn (x red, y green,
            z blue, from the head centre); a red border marks a frame whose tracking was lost,
            an orange one a frame whose landmarks were interpolated
    row 2:  the same frames with the semantic masks overlaid (colour per class)
    row 3:  the background plate | curves over time: head rotation (yaw/pitch/roll, degrees),
            head translation minus its median (cm), jawOpen and eyeBlink blendshapes; lost frames
            shaded red, interpolated ones orange, the 8 frames of rows 1-2 marked by grey lines
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from avatar3d.core import video
from avatar3d.core.dataset import DatasetPaths, Label, Manifest, load_tracks
from avatar3d.core.vocab import CHIN, FOREHEAD, blendshape_index
from avatar3d.errors import UserError
from avatar3d.fsutil import atomic_path
from avatar3d.core.masks import iter_masks

VERSION = 1
NUM_TILES = 8
TILE = 256
WIDTH = NUM_TILES * TILE  # 2048
HEADER = 56
PLATE = 480
HEIGHT = HEADER + 2 * TILE + PLATE  # 1048

# RGB colour per Label value.
LABEL_COLORS = np.array(
    [
        [0, 0, 0],  # BACKGROUND (not drawn)
        [160, 60, 255],  # TORSO
        [255, 190, 0],  # HAIR
        [40, 220, 60],  # FACE
        [255, 0, 70],  # MOUTH
    ],
    dtype=np.uint8,
)
LOST = (230, 40, 40)
INTERPOLATED = (255, 150, 0)
AXIS_COLORS = ((255, 40, 40), (40, 220, 40), (60, 120, 255))
AXIS_CM = 6.0  # length of the drawn head axes in head space


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
          color: tuple[int, int, int] = (255, 255, 255), thickness: int = 1) -> None:
    import cv2

    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def head_angles(R: np.ndarray, canonical: np.ndarray | None) -> np.ndarray:
    """Yaw, pitch, roll in degrees ``[N, 3]`` of head rotations ``R`` [N, 3, 3].

    The rotation away from a head looking straight into the camera, upright, is decomposed as
    ``Ry(yaw) @ Rx(pitch) @ Rz(roll)`` about the camera's axes (x right, y down, z forward):
    yaw > 0 turns the face towards the image's left, pitch > 0 tilts it down, roll > 0 tilts the
    top of the head towards the image's right. "Upright" means the chin -> forehead line of the
    canonical face points up, so a person looking straight at the camera typically shows a
    pitch offset of several degrees (the forehead leans back). The head's own
    up/forward axes come from the canonical landmarks [478, 3] (chin -> forehead, face centre ->
    nose tip); without usable canonical landmarks, angles are relative to the clip's median pose.
    """
    basis = None
    if canonical is not None and np.isfinite(canonical).all():
        up = canonical[FOREHEAD] - canonical[CHIN]
        fwd = canonical[1] - canonical.mean(axis=0)
        if np.linalg.norm(up) > 1e-6 and np.linalg.norm(fwd) > 1e-6:
            up = up / np.linalg.norm(up)
            fwd = fwd - up * (fwd @ up)
            if np.linalg.norm(fwd) > 1e-6:
                fwd = fwd / np.linalg.norm(fwd)
                basis = np.stack([np.cross(up, fwd), up, fwd], axis=1)  # head-space columns
    if basis is not None:
        # Facing the camera: head up -> camera -y, head forward -> camera -z.
        up_c, fwd_c = np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])
        facing = np.stack([np.cross(up_c, fwd_c), up_c, fwd_c], axis=1)
        A = R @ basis @ facing.T  # [N, 3, 3] camera-frame rotation away from facing the camera
    else:
        med = np.median(R, axis=0)
        u, _, vt = np.linalg.svd(med)
        A = R @ (u @ vt).T
    yaw = np.degrees(np.arctan2(A[:, 0, 2], A[:, 2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-A[:, 1, 2], -1.0, 1.0)))
    roll = np.degrees(np.arctan2(A[:, 1, 0], A[:, 1, 1]))
    return np.stack([yaw, pitch, roll], axis=1)


def project(K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-space points ``[..., 3]`` to pixels ``[..., 2]``."""
    p = points @ K.T
    return p[..., :2] / np.maximum(p[..., 2:3], 1e-6)


def _draw_frame_tile(frame: np.ndarray, landmarks: np.ndarray | None, K: np.ndarray | None,
                     R: np.ndarray | None, t: np.ndarray | None) -> np.ndarray:
    import cv2

    size = frame.shape[0]
    s = TILE / size
    tile = cv2.resize(frame, (TILE, TILE), interpolation=cv2.INTER_AREA)
    if landmarks is not None and np.isfinite(landmarks).all():
        xy = np.floor(landmarks[:, :2] * s).astype(int)
        inside = (xy >= 0).all(1) & (xy < TILE).all(1)
        tile[xy[inside, 1], xy[inside, 0]] = (0, 255, 255)
    if K is not None and R is not None and t is not None and t[2] > 0:
        ends = t[None] + (R @ (np.eye(3) * AXIS_CM)).T  # [3, 3] axis tips in camera space
        uv = project(K, np.concatenate([t[None], ends])) * s
        if np.isfinite(uv).all() and np.abs(uv).max() < 8 * TILE:
            o = tuple(np.round(uv[0]).astype(int))
            for k in range(3):
                cv2.line(tile, o, tuple(np.round(uv[k + 1]).astype(int)), AXIS_COLORS[k], 2, cv2.LINE_AA)
            cv2.circle(tile, o, 3, (255, 255, 255), -1, cv2.LINE_AA)
    return tile


def _draw_mask_tile(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    import cv2

    overlay = frame.copy()
    fg = labels != Label.BACKGROUND
    overlay[fg] = (0.45 * frame[fg] + 0.55 * LABEL_COLORS[labels[fg]]).astype(np.uint8)
    edges = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    overlay[edges] = (255, 255, 255)
    return cv2.resize(overlay, (TILE, TILE), interpolation=cv2.INTER_AREA)


def _mark(tile: np.ndarray, index: int, lost: bool, interpolated: bool) -> None:
    import cv2

    if lost or interpolated:
        color = LOST if lost else INTERPOLATED
        cv2.rectangle(tile, (1, 1), (TILE - 2, TILE - 2), color, 3)
        _text(tile, "LOST" if lost else "INTERP", (8, TILE - 10), 0.5, color, 2)
    _text(tile, f"#{index}", (6, 18), 0.5, (0, 0, 0), 3)
    _text(tile, f"#{index}", (6, 18), 0.5)


def _plot(panel: np.ndarray, series: Sequence[tuple[str, np.ndarray, tuple[int, int, int]]], title: str,
          lost: np.ndarray, interpolated: np.ndarray, marks: np.ndarray, fixed: tuple[float, float] | None = None,
          min_span: float = 0.0) -> None:
    """Line plot of several ``[N]`` series into ``panel`` (modified in place).

    The y range is ``fixed`` or fitted to the data, at least ``min_span`` tall (so jitter of a
    nearly still head does not fill the panel like real motion).
    """
    import cv2

    h, w = panel.shape[:2]
    left, right, top, bottom = 48, 8, 20, 6
    pw, ph = w - left - right, h - top - bottom
    n = len(series[0][1])
    xs = left + (np.arange(n) + 0.5) * pw / max(n, 1)
    for mask, color in ((interpolated, INTERPOLATED), (lost, LOST)):
        for i in np.flatnonzero(mask):
            x0, x1 = int(left + i * pw / n), int(left + (i + 1) * pw / n)
            panel[top : top + ph, x0 : max(x1, x0 + 1)] = (0.5 * panel[top : top + ph, x0 : max(x1, x0 + 1)]
                                                          + 0.5 * np.array(color)).astype(np.uint8)
    for i in marks:
        cv2.line(panel, (int(xs[i]), top), (int(xs[i]), top + ph), (110, 110, 110), 1)
    values = np.concatenate([v[np.isfinite(v)] for _, v, _ in series] + [np.zeros(1)])
    if fixed is not None:
        lo, hi = fixed
    else:
        lo, hi = float(values.min()), float(values.max())
        grow = max(min_span - (hi - lo), 0.0) / 2
        lo, hi = lo - grow, hi + grow
        pad = 0.08 * max(hi - lo, 1e-3)
        lo, hi = lo - pad, hi + pad

    def y_of(v: np.ndarray) -> np.ndarray:
        return top + ph - (v - lo) / (hi - lo) * ph

    cv2.rectangle(panel, (left, top), (left + pw, top + ph), (90, 90, 90), 1)
    if lo < 0 < hi:
        y0 = int(y_of(np.array(0.0)))
        cv2.line(panel, (left, y0), (left + pw, y0), (70, 70, 70), 1)
    for value, org_y in ((hi, top + 10), (lo, top + ph)):
        _text(panel, f"{value:.1f}", (2, int(org_y)), 0.38, (200, 200, 200))
    _text(panel, title, (left + 4, 14), 0.45)
    x_legend = left + 12 + int(8.5 * len(title))
    for name, v, color in series:
        ok = np.isfinite(v)
        pts = np.stack([xs[ok], y_of(v[ok])], axis=1).round().astype(np.int32)
        if len(pts) > 1:
            cv2.polylines(panel, [pts], False, color, 1, cv2.LINE_AA)
        _text(panel, name, (x_legend, 14), 0.42, color)
        x_legend += 10 + int(8 * len(name))


def make_contact_sheet(paths: DatasetPaths, manifest: Manifest) -> None:
    """Write paths.contact_sheet (``HEIGHT x WIDTH`` RGB PNG) from frames, tracks, masks and plate."""
    import cv2

    tracks = load_tracks(paths.root)
    n = manifest.num_frames
    lm = tracks["landmarks"]
    if lm.shape[0] != n:
        raise UserError(f"tracks.npz has {lm.shape[0]} frames, the manifest {n}: rerun preprocess with --force")
    valid = tracks["valid"].astype(bool) if "valid" in tracks else np.ones(n, bool)
    interpolated = tracks["interpolated"].astype(bool) if "interpolated" in tracks else np.zeros(n, bool)
    lost = ~valid & ~interpolated
    K, R, t = tracks.get("K"), tracks.get("R"), tracks.get("t")
    picks = np.unique(np.round(np.linspace(0, n - 1, NUM_TILES)).astype(int))

    sheet = np.full((HEIGHT, WIDTH, 3), 24, dtype=np.uint8)
    wanted = {int(i): k for k, i in enumerate(picks)}
    masks = iter_masks(paths.masks) if paths.masks.is_file() else None
    for i, frame in enumerate(video.iter_frames(paths.frames)):
        labels = next(masks, None) if masks is not None else None
        if i not in wanted:
            if i > picks[-1]:
                break
            continue
        k = wanted[i]
        pose = (K, R[i], t[i]) if K is not None and R is not None and t is not None else (None, None, None)
        tile = _draw_frame_tile(frame, lm[i] if (valid[i] or interpolated[i]) else None, *pose)
        _mark(tile, i, bool(lost[i]), bool(interpolated[i]))
        sheet[HEADER : HEADER + TILE, k * TILE : (k + 1) * TILE] = tile
        if labels is not None:
            mtile = _draw_mask_tile(frame, labels)
            _mark(mtile, i, bool(lost[i]), bool(interpolated[i]))
            sheet[HEADER + TILE : HEADER + 2 * TILE, k * TILE : (k + 1) * TILE] = mtile
    if masks is not None:
        masks.close()

    y3 = HEADER + 2 * TILE
    if paths.background.is_file():
        plate = cv2.imread(str(paths.background), cv2.IMREAD_COLOR)
        if plate is not None:
            sheet[y3 : y3 + PLATE, :PLATE] = cv2.resize(plate[..., ::-1], (PLATE, PLATE), interpolation=cv2.INTER_AREA)
            _text(sheet, "background plate", (8, y3 + 20), 0.5, (0, 0, 0), 3)
            _text(sheet, "background plate", (8, y3 + 20), 0.5)

    panel_h = PLATE // 3
    px0 = PLATE
    panels = [sheet[y3 + j * panel_h : y3 + (j + 1) * panel_h, px0:] for j in range(3)]
    if R is not None:
        ang = head_angles(R.astype(np.float64), tracks.get("canonical"))
        _plot(panels[0], [("yaw", ang[:, 0], (255, 80, 80)), ("pitch", ang[:, 1], (80, 220, 80)),
                          ("roll", ang[:, 2], (90, 150, 255))], "head rotation (deg)", lost, interpolated, picks,
              min_span=10.0)
    if t is not None:
        dt = t - np.median(t, axis=0)
        _plot(panels[1], [("x", dt[:, 0], (255, 80, 80)), ("y", dt[:, 1], (80, 220, 80)),
                          ("z", dt[:, 2], (90, 150, 255))], "head translation - median (cm)", lost, interpolated, picks,
              min_span=2.0)
    if "blendshapes" in tracks:
        bs = tracks["blendshapes"]
        _plot(panels[2], [("jawOpen", bs[:, blendshape_index("jawOpen")], (255, 0, 200)),
                          ("eyeBlinkLeft", bs[:, blendshape_index("eyeBlinkLeft")], (0, 220, 220)),
                          ("eyeBlinkRight", bs[:, blendshape_index("eyeBlinkRight")], (240, 240, 240))],
              "blendshapes", lost, interpolated, picks, fixed=(0.0, 1.0))

    tracked = int(valid.sum())
    head = (f"{manifest.source_name}   {n} frames @ {manifest.fps} fps   {manifest.size}x{manifest.size}   "
            f"tracked {tracked}/{n} ({100.0 * tracked / max(n, 1):.1f}%)   interpolated {int(interpolated.sum())}"
            f"   lost {int(lost.sum())}")
    _text(sheet, head, (10, 24), 0.6)
    x = 10
    for label in Label:
        if label == Label.BACKGROUND:
            continue
        color = tuple(int(c) for c in LABEL_COLORS[label])
        cv2.rectangle(sheet, (x, 36), (x + 14, 50), color, -1)
        name = "torso+neck" if label == Label.TORSO else label.name.lower()
        _text(sheet, name, (x + 20, 49), 0.5)
        x += 40 + 10 * len(name)
    _text(sheet, "axes: x red, y green, z blue (head centre)   border: red = tracking lost, orange = interpolated",
          (x + 20, 49), 0.5, (200, 200, 200))

    with atomic_path(paths.contact_sheet) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(sheet[..., ::-1])):
            raise OSError(f"could not write {paths.contact_sheet}")

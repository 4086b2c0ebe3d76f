"""The scene of a run: what drawing an avatar needs from its dataset, read without decoding video.

A :class:`Scene` holds the fitted image window, the window's intrinsics, every frame's head pose,
motion code (tracked blendshapes), tracked landmarks and audio features, and the train/val split.
It comes from the dataset's ``tracks.npz``, ``manifest.json`` and ``features/`` plus the run's
``scene.json`` (the window), so render, eval and the viewer start in well under a second.

Pixels are decoded only where they are needed, once, in one pass over the clip
(:func:`iter_dataset_frames`): fit's training frames, eval's val frames, render's torso/background
bases. Every caller composes a frame's base with :func:`compose_base` and crops and resamples it to
the window with the same code.

What the avatar draws (:func:`drawn_region`): the head labels (face, hair, inside of the mouth)
and, when the run draws a neck (``neck_reach`` > 0), the neck under the face down to a line fixed
to the head (:func:`neck_region`), below the lowest the chin goes in the training frames. The base
it is drawn over is the frame with that region removed: the background plate where the head was,
the neck's own colour (carried up from just below the region, column by column) where the neck
was. So the frame's own chin, and the shadow under it, never show beside a rendered chin that
moved.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from avatar3d.core.avatar import Conditioning
from avatar3d.core.camera import Camera
from avatar3d.core.dataset import HEAD_LABELS, DatasetPaths, Label, Manifest, load_tracks, read_manifest
from avatar3d.core.runs import RunInfo
from avatar3d.core.vocab import CHIN, FACE_OVAL, FOREHEAD, MOUTH_CORNERS, SUBNASALE
from avatar3d.errors import UserError

SCENE_FORMAT = 1


@dataclass(frozen=True)
class Window:
    """The square part of the dataset frames that is fitted: ``[x0, x0+side)^2`` at ``size``^2."""

    x0: int
    y0: int
    side: int
    size: int

    @property
    def scale(self) -> float:
        """Window pixels per dataset pixel."""
        return self.size / self.side

    def to_json(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "side": self.side, "size": self.size}

    @staticmethod
    def from_json(obj: dict) -> "Window":
        return Window(int(obj["x0"]), int(obj["y0"]), int(obj["side"]), int(obj["size"]))


def head_window(data_dir: Path, kind: str, margin: float, image_size: int, neck_reach: float = 0.0,
                landmarks: np.ndarray | None = None) -> Window:
    """The window a fit uses: ``kind`` "full" (the whole frame) or "head" (the union of what the
    avatar draws over the clip (:func:`drawn_region`; ``landmarks`` [N, 478, >=2] dataset pixels,
    needed when ``neck_reach`` > 0), pixels drawn in at least 2 % of the frames, grown by
    ``margin`` of its side; decodes masks.mkv once), resampled to ``image_size`` (0 = not resampled)."""
    from avatar3d.core.masks import iter_masks

    paths = DatasetPaths(Path(data_dir))
    manifest = read_manifest(paths.root)
    n, size = manifest.num_frames, manifest.size
    if kind == "head":
        if not paths.masks.is_file():
            raise UserError(f"dataset {paths.root} has no {paths.masks.name}: rerun `avatar3d preprocess`")
        count = np.zeros((size, size), np.int32)
        for i, labels in enumerate(iter_masks(paths.masks)):
            count += drawn_region(labels, None if landmarks is None else landmarks[i], neck_reach)
        x0, y0, side = _square_around(count >= max(1, 0.02 * n), margin, size)
    else:
        x0, y0, side = 0, 0, size
    return Window(x0, y0, side, image_size or side)


def _square_around(mask: np.ndarray, margin: float, frame_size: int) -> tuple[int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise UserError("the dataset's masks contain no head pixels: rerun preprocess")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(math.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = min(side, frame_size)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x = int(round(min(max(cx - side / 2, 0), frame_size - side)))
    y = int(round(min(max(cy - side / 2, 0), frame_size - side)))
    return x, y, side


def audio_window_indices(k: int, window: int, num: int) -> torch.Tensor:
    """Frame indices of the audio window around frame ``k`` (clamped to ``[0, num)``). [window]"""
    return torch.arange(k - window // 2, k - window // 2 + window).clamp(0, num - 1)


def frame_conditioning(
    motion: torch.Tensor, audio: torch.Tensor | None, k: int, window: int, device
) -> Conditioning:
    """Frame k's :class:`Conditioning`: its motion code of ``motion`` [N, 52] and, when ``audio``
    [N, A] (per-frame features, flattened) is given, the ``window`` frames of it around k."""
    a = None
    if audio is not None:
        a = audio[audio_window_indices(k, window, audio.shape[0])][None]  # [1, W, A]
    return Conditioning(motion[k : k + 1], a).to(device)


@dataclass(frozen=True)
class Scene:
    """A dataset seen through a fit window (see module docstring). No pixels."""

    data_dir: Path
    manifest: Manifest
    window: Window
    K: torch.Tensor  # [3, 3] intrinsics of the window
    R: torch.Tensor  # [N, 3, 3] head-to-camera rotation per frame
    t: torch.Tensor  # [N, 3] (cm)
    motion: torch.Tensor  # [N, 52] tracked blendshapes
    audio: torch.Tensor | None  # [N, A] audio features per frame, flattened; None = none asked for
    landmarks: np.ndarray  # [N, 478, 2] tracked landmarks in window pixels
    train: np.ndarray  # [T] frame indices of the train split (tracked ones)
    val: np.ndarray  # [V] frame indices of the val split (tracked ones)
    neck_reach: float = 0.0  # how far down the avatar draws the neck (:func:`neck_region`; 0 = no neck)

    @property
    def frame_size(self) -> int:
        return self.manifest.size

    @property
    def num_frames(self) -> int:
        return self.manifest.num_frames

    def camera(self, i: int, device, R: torch.Tensor | None = None) -> Camera:
        """Frame i's camera over the window (its head rotation, or ``R`` [3, 3] in its place)."""
        return Camera.from_pose(self.K, self.R[i] if R is None else R, self.t[i], self.window.size,
                                self.window.size, device)

    def frame_landmarks(self, i: int) -> np.ndarray:
        """Frame i's tracked landmarks in dataset pixels: [478, 2]."""
        w = self.window
        return self.landmarks[i] / w.scale + np.array([w.x0, w.y0], np.float32)

    def conditioning(self, i: int, audio_window: int, device) -> Conditioning:
        """Frame i's tracked conditioning (:func:`frame_conditioning`)."""
        return frame_conditioning(self.motion, self.audio, i, audio_window, device)


def load_scene(data_dir: Path, window: Window, audio_features: str = "", tracks: dict | None = None,
               neck_reach: float = 0.0) -> Scene:
    """Read a dataset's tracks (unless the caller read them: ``tracks``), manifest and (when named)
    audio features for a window, for an avatar drawing the neck to ``neck_reach``. UserError (one
    line) when the dataset is missing, stale or lacks what is needed."""
    paths = DatasetPaths(Path(data_dir))
    manifest = read_manifest(paths.root)
    tracks = load_tracks(paths.root) if tracks is None else tracks
    missing = [k for k in ("landmarks", "blendshapes", "valid", "K", "R", "t", "canonical") if k not in tracks]
    if missing:
        raise UserError(f"dataset {paths.root} lacks tracks {missing}: rerun `avatar3d preprocess`")
    n, size = manifest.num_frames, manifest.size
    if len(tracks["valid"]) != n:
        raise UserError(f"dataset {paths.root}: tracks.npz has {len(tracks['valid'])} frames, manifest {n}")
    if not (0 <= window.x0 and 0 <= window.y0 and window.x0 + window.side <= size and window.y0 + window.side <= size):
        raise UserError(f"the fit window {window.to_json()} lies outside the dataset's {size}x{size} frames")
    K = torch.as_tensor(tracks["K"], dtype=torch.float32)
    Kw = Camera(K, torch.eye(4), size, size).crop_resize(window.x0, window.y0, window.side, window.size).K
    lm = tracks["landmarks"][..., :2].astype(np.float32)
    lm_w = (lm - np.array([window.x0, window.y0], np.float32)) * window.scale
    ok = tracks["valid"].astype(bool) | tracks.get("interpolated", np.zeros(n, bool)).astype(bool)
    train = np.array([i for i in manifest.frame_indices("train") if ok[i]])
    val = np.array([i for i in manifest.frame_indices("val") if ok[i]])
    if len(train) == 0 or len(val) == 0:
        raise UserError(f"dataset {paths.root} has no tracked frames in its train or val split")
    audio = None
    if audio_features:
        fpath = paths.features(audio_features)
        if not fpath.is_file():
            raise UserError(f"dataset {paths.root} has no audio features {fpath.name}: rerun preprocess")
        feats = np.load(fpath)
        if feats.shape[0] != n:
            raise UserError(f"{fpath} has {feats.shape[0]} frames, the dataset {n}")
        audio = torch.from_numpy(feats.reshape(n, -1).astype(np.float32))
    return Scene(
        data_dir=paths.root, manifest=manifest, window=window, K=Kw,
        R=torch.from_numpy(tracks["R"].astype(np.float32)), t=torch.from_numpy(tracks["t"].astype(np.float32)),
        motion=torch.from_numpy(tracks["blendshapes"].astype(np.float32)), audio=audio,
        landmarks=lm_w, train=train, val=val, neck_reach=float(neck_reach),
    )


def write_scene_file(path: Path, window: Window, neck_reach: float) -> None:
    """RUN/scene.json: the window the run was fitted in and how far down it draws the neck (atomically)."""
    from avatar3d.fsutil import write_json

    write_json(path, {"format": SCENE_FORMAT, "window": window.to_json(), "neck_reach": float(neck_reach)})


def run_window(info: RunInfo) -> tuple[Window, float]:
    """The window RUN was fitted in and its neck depth: RUN/scene.json, or for runs written before
    it existed, the window recorded in RUN/metrics.json (no neck; nor in scene.json files written
    before the neck was drawn)."""
    paths = info.paths
    try:
        if paths.scene.is_file():
            obj = json.loads(paths.scene.read_text())
            return Window.from_json(obj["window"]), float(obj.get("neck_reach", 0.0))
        w = json.loads(paths.metrics.read_text())["window"]
        size = int(json.loads(paths.metrics.read_text())["resolution"][0])
        return Window(int(w["x0"]), int(w["y0"]), int(w["side"]), size), 0.0
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"run {paths.root} does not say which window it was fitted in: {exc}") from None


def load_run_scene(info: RunInfo, audio_features: str) -> Scene:
    """The scene of a finished run (its window and neck, its dataset's tracks, the avatar's audio features)."""
    window, neck_reach = run_window(info)
    try:
        return load_scene(info.data, window, audio_features, neck_reach=neck_reach)
    except UserError as exc:
        raise UserError(f"run {info.run} was fitted on a dataset that cannot be used: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Pixels, decoded once where needed


@dataclass(frozen=True)
class FaceFrame:
    """A face's own image frame from its landmarks, anchored on points the jaw does not move: the
    origin at the base of the nose (subnasale), the unit ``up`` (towards the top of the forehead)
    and ``right`` vectors, the ``scale`` (subnasale to forehead), the face oval's extent along
    ``right`` (``left_px`` < 0 < ``right_px``) and the mouth corners' height along ``up``
    (negative), all in the landmarks' pixels."""

    origin: np.ndarray  # [2]
    up: np.ndarray  # [2]
    right: np.ndarray  # [2]
    scale: float
    left_px: float
    right_px: float
    mouth_height: float

    @staticmethod
    def of(landmarks: np.ndarray | None) -> "FaceFrame | None":
        """From ``[478, >=2]`` landmarks; None when they are missing, not finite or degenerate."""
        if landmarks is None:
            return None
        pts = np.asarray(landmarks, np.float64)[:, :2]
        if not np.isfinite(pts).all():
            return None
        origin = pts[SUBNASALE]
        axis = pts[FOREHEAD] - origin
        scale = float(np.hypot(*axis))
        if scale < 2.0:
            return None
        up = axis / scale
        right = np.array([-up[1], up[0]])
        lateral = (pts[list(FACE_OVAL)] - origin) @ right
        mouth = float(((pts[list(MOUTH_CORNERS[:2])] - origin) @ up).mean())
        return FaceFrame(origin, up, right, scale, float(lateral.min()), float(lateral.max()), mouth)

    def chin_depth(self, landmarks: np.ndarray) -> float:
        """How far below the origin the chin of ``landmarks`` [478, >=2] lies, in units of ``scale``."""
        return float(-((np.asarray(landmarks, np.float64)[CHIN, :2] - self.origin) @ self.up) / self.scale)

    def coordinates(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Every pixel centre of an ``[H, W]`` image in this frame: (along ``up`` from the origin,
        along ``right`` from it), each [H, W] pixels."""
        ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float32) + 0.5
        dx, dy = xs - self.origin[0], ys - self.origin[1]
        return (dx * self.up[0] + dy * self.up[1]), (dx * self.right[0] + dy * self.right[1])


def neck_region(labels: np.ndarray, landmarks: np.ndarray | None, reach: float) -> np.ndarray:
    """The neck under a face: torso pixels within the face oval's width, from the mouth's height
    down to ``reach`` (:class:`FaceFrame` scales) below the base of the nose, in the face's own
    frame (a tilted head tilts it; an opening jaw does not move it). labels [H, W] uint8,
    landmarks [478, >=2] in the same pixels -> [H, W] bool (empty when the landmarks are unusable
    or ``reach`` <= 0)."""
    face = FaceFrame.of(landmarks)
    out = np.zeros(labels.shape, bool)
    if face is None or reach <= 0:
        return out
    along, lateral = face.coordinates(labels.shape)
    out = (along >= -reach * face.scale) & (along <= face.mouth_height)
    out &= (lateral >= face.left_px) & (lateral <= face.right_px)
    return out & (labels == Label.TORSO)


def fit_neck_reach(landmarks: np.ndarray, frames: np.ndarray, margin: float) -> float:
    """How far down a fit draws the neck: ``margin`` (:class:`FaceFrame` scales) below the lowest
    the chin goes in ``frames`` (its 99th percentile) of ``landmarks`` [N, 478, >=2]; 0 when
    ``margin`` is 0 (no neck) or no frame has usable landmarks."""
    if margin <= 0:
        return 0.0
    depths = [f.chin_depth(landmarks[i]) for i in frames if (f := FaceFrame.of(landmarks[i])) is not None]
    return float(np.percentile(depths, 99) + margin) if depths else 0.0


def drawn_region(labels: np.ndarray, landmarks: np.ndarray | None, neck_reach: float,
                 neck: np.ndarray | None = None) -> np.ndarray:
    """What the avatar draws in a frame (see module docstring): [H, W] bool. ``neck``:
    :func:`neck_region` of this frame when the caller has it already."""
    head = np.isin(labels, np.array(HEAD_LABELS, np.uint8))
    if neck_reach <= 0:
        return head
    return head | (neck_region(labels, landmarks, neck_reach) if neck is None else neck)


def compose_base(frame: np.ndarray, labels: np.ndarray, landmarks: np.ndarray | None, plate: np.ndarray,
                 neck_reach: float, background: np.ndarray | None = None, neck: np.ndarray | None = None
                 ) -> np.ndarray:
    """The base a frame's avatar is drawn over (see module docstring): ``[H, W, 3] uint8``.
    frame [H, W, 3] uint8, labels [H, W] uint8, landmarks [478, >=2] (or None), plate [H, W, 3]
    uint8; ``background`` [H, W, 3] uint8 (optional) also replaces the pixels labelled background.
    Without a neck (``neck_reach`` 0) the head pixels just above the torso take the neck's colour
    instead (:func:`neck_fill_band`): there the rendered chin may end higher than the frame's.
    ``neck``: :func:`neck_region` of this frame when the caller has it already."""
    head = np.isin(labels, np.array(HEAD_LABELS, np.uint8))
    base = np.where(head[..., None], plate, frame)
    if background is not None:
        base = np.where((head | (labels == Label.BACKGROUND))[..., None], background, base)
    if neck_reach > 0:
        neck = neck_region(labels, landmarks, neck_reach) if neck is None else neck
    else:
        neck = neck_fill_band(labels, head)
    fill_from_below(base, frame, neck)
    return np.ascontiguousarray(base)


def neck_fill_band(labels: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Head pixels within ~2.5 % of the frame above the torso (a head-only avatar's chin may end
    above the frame's when the new audio shuts the jaw further). [H, W] bool"""
    import cv2

    torso = labels == Label.TORSO
    if not torso.any():
        return np.zeros_like(head)
    h = labels.shape[0]
    k = 2 * max(1, int(round(0.025 * h))) + 1
    near = cv2.dilate(torso.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    first = np.where(torso.any(0), torso.argmax(0), h)  # [W] first torso row of each column
    return head & near & (np.arange(h)[:, None] < first[None, :])


def fill_from_below(base: np.ndarray, frame: np.ndarray, region: np.ndarray) -> None:
    """In place: each column's ``region`` pixels of ``base`` [H, W, 3] take the colour ``frame``
    has 2 pixels below the region's lowest pixel in that column (the neck carried up)."""
    if not region.any():
        return
    h = region.shape[0]
    cols = np.nonzero(region.any(0))[0]
    lowest = h - 1 - region[::-1, cols].argmax(0)  # [C] last region row per column
    colours = frame[np.clip(lowest + 2, 0, h - 1), cols]  # [C, 3]
    ys, xs = np.nonzero(region)
    lut = np.zeros((region.shape[1], 3), frame.dtype)
    lut[cols] = colours
    base[ys, xs] = lut[xs]


@dataclass(frozen=True)
class WindowFrame:
    """One dataset frame cropped and resampled to the window (uint8, on the CPU)."""

    image: torch.Tensor  # [S, S, 3]
    background: torch.Tensor  # [S, S, 3]: the base the avatar is drawn over (:func:`compose_base`)
    head: torch.Tensor  # [S, S] (255 = drawn by the avatar: face + hair + mouth, and the neck if it draws one)
    mouth: torch.Tensor  # [S, S] (255 = inside of the mouth)


def read_plate(data_dir: Path, size: int) -> np.ndarray:
    """The dataset's background plate: ``[size, size, 3] uint8`` RGB (UserError when unreadable)."""
    import cv2

    path = DatasetPaths(Path(data_dir)).background
    plate = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if plate is None or plate.shape[:2] != (size, size):
        raise UserError(f"{path} is unreadable or not {size}x{size}")
    return np.ascontiguousarray(plate[..., ::-1])


def downsample(image: torch.Tensor, size: int) -> torch.Tensor:
    """Area-style resampling of [H, W, C] to [size, size, C] (antialiased bilinear)."""
    x = image.permute(2, 0, 1)[None].float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0)


class WindowCropper:
    """Crops dataset frames (and their label maps) to a window over the base they are drawn on
    (:func:`compose_base`)."""

    def __init__(self, window: Window, plate: np.ndarray, neck_reach: float = 0.0):
        w = window
        self.window, self.plate, self.neck_reach = window, plate, neck_reach
        self.crop = (slice(w.y0, w.y0 + w.side), slice(w.x0, w.x0 + w.side))

    def __call__(self, frame: np.ndarray, labels: np.ndarray, landmarks: np.ndarray | None = None) -> WindowFrame:
        """frame [H, W, 3] uint8, labels [H, W] uint8, landmarks [478, >=2] dataset pixels (None:
        no neck) -> the window's :class:`WindowFrame` (``head``: what the avatar draws)."""
        neck = neck_region(labels, landmarks, self.neck_reach)  # once: the base and the drawn region
        base = compose_base(frame, labels, landmarks, self.plate, self.neck_reach, neck=neck)
        drawn = drawn_region(labels, landmarks, self.neck_reach, neck=neck)
        f = torch.from_numpy(np.ascontiguousarray(frame[self.crop]))
        bg = torch.from_numpy(np.ascontiguousarray(base[self.crop]))
        h = torch.from_numpy(np.ascontiguousarray(drawn[self.crop]))
        m = torch.from_numpy(np.ascontiguousarray(labels[self.crop] == Label.MOUTH))
        S = self.window.size
        if self.window.side == S:  # no resampling: keep uint8
            return WindowFrame(f, bg, h.to(torch.uint8) * 255, m.to(torch.uint8) * 255)
        stack = torch.cat([f, bg, h[..., None].to(torch.uint8) * 255, m[..., None].to(torch.uint8) * 255], -1)
        stack = downsample(stack.float(), S).round().clamp(0, 255).to(torch.uint8)
        return WindowFrame(stack[..., :3], stack[..., 3:6], stack[..., 6], stack[..., 7])

    def image(self, frame: np.ndarray) -> torch.Tensor:
        """Only the frame [H, W, 3] uint8 in the window, resampled as :meth:`__call__` resamples it:
        [S, S, 3] uint8 (no base, no masks)."""
        f = torch.from_numpy(np.ascontiguousarray(frame[self.crop]))
        if self.window.side == self.window.size:
            return f
        return downsample(f.float(), self.window.size).round().clamp(0, 255).to(torch.uint8)


def iter_dataset_frames(data_dir: Path, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(i, frame [H, W, 3] uint8, labels [H, W] uint8)`` of the dataset's frames in ``indices``
    (all when None), in order, in one decoding pass that stops after the last one asked for.
    UserError when the clip or its masks are missing or shorter than the manifest says."""
    from avatar3d.core.masks import iter_masks
    from avatar3d.core.video import iter_frames

    paths = DatasetPaths(Path(data_dir))
    n = read_manifest(paths.root).num_frames
    for p in (paths.frames, paths.masks):
        if not p.is_file():
            raise UserError(f"dataset {paths.root} has no {p.name}: rerun `avatar3d preprocess`")
    wanted = None if indices is None else {int(i) for i in indices}
    last = n - 1 if wanted is None else (max(wanted) if wanted else -1)
    seen = 0
    for i, (frame, labels) in enumerate(zip(iter_frames(paths.frames), iter_masks(paths.masks))):
        if i > last:
            break
        seen = i + 1
        if wanted is None or i in wanted:
            yield i, frame, labels
    if seen <= last:
        raise UserError(f"dataset {paths.root}: frames.mp4/masks.mkv hold {seen} frames, frame {last} was asked for")


def window_frames(scene: Scene, indices: Iterable[int]) -> dict[int, WindowFrame]:
    """The window crops of some frames (one decoding pass): ``{i: WindowFrame}``."""
    cropper = WindowCropper(scene.window, read_plate(scene.data_dir, scene.frame_size), scene.neck_reach)
    return {i: cropper(frame, labels, scene.frame_landmarks(i))
            for i, frame, labels in iter_dataset_frames(scene.data_dir, indices)}

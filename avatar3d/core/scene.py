"""The scene of a run: what drawing an avatar needs from its dataset, read without decoding video.

A :class:`Scene` holds the fitted image window, the window's intrinsics, every frame's head pose,
motion code (tracked blendshapes), tracked landmarks and audio features, and the train/val split.
It comes from the dataset's ``tracks.npz``, ``manifest.json`` and ``features/`` plus the run's
``scene.json`` (the window), so render, eval and the viewer start in well under a second.

Pixels are decoded only where they are needed, once, in one pass over the clip
(:func:`iter_window_frames`): fit's training frames, eval's val frames, render's torso/background
bases. Every caller crops and resamples a dataset frame to the window with the same code.
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


def head_window(data_dir: Path, kind: str, margin: float, image_size: int) -> Window:
    """The window a fit uses: ``kind`` "full" (the whole frame) or "head" (the union of the head
    masks over the clip, pixels that are head in at least 2 % of the frames, grown by ``margin``
    of its side; decodes masks.mkv once), resampled to ``image_size`` (0 = not resampled)."""
    from avatar3d.core.masks import iter_masks

    paths = DatasetPaths(Path(data_dir))
    manifest = read_manifest(paths.root)
    n, size = manifest.num_frames, manifest.size
    if kind == "head":
        if not paths.masks.is_file():
            raise UserError(f"dataset {paths.root} has no {paths.masks.name}: rerun `avatar3d preprocess`")
        count = np.zeros((size, size), np.int32)
        heads = np.array(HEAD_LABELS, np.uint8)
        for labels in iter_masks(paths.masks):
            count += np.isin(labels, heads)
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

    def conditioning(self, i: int, audio_window: int, device) -> Conditioning:
        """Frame i's tracked conditioning (:func:`frame_conditioning`)."""
        return frame_conditioning(self.motion, self.audio, i, audio_window, device)


def load_scene(data_dir: Path, window: Window, audio_features: str = "", tracks: dict | None = None) -> Scene:
    """Read a dataset's tracks (unless the caller read them: ``tracks``), manifest and (when named)
    audio features for a window. UserError (one line) when the dataset is missing, stale or lacks
    what is needed."""
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
        landmarks=lm_w, train=train, val=val,
    )


def write_scene_file(path: Path, window: Window) -> None:
    """RUN/scene.json: the window the run was fitted in (atomically)."""
    from avatar3d.fsutil import write_json

    write_json(path, {"format": SCENE_FORMAT, "window": window.to_json()})


def run_window(info: RunInfo) -> Window:
    """The window RUN was fitted in: RUN/scene.json, or for runs written before it existed, the
    window recorded in RUN/metrics.json."""
    paths = info.paths
    try:
        if paths.scene.is_file():
            return Window.from_json(json.loads(paths.scene.read_text())["window"])
        w = json.loads(paths.metrics.read_text())["window"]
        size = int(json.loads(paths.metrics.read_text())["resolution"][0])
        return Window(int(w["x0"]), int(w["y0"]), int(w["side"]), size)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"run {paths.root} does not say which window it was fitted in: {exc}") from None


def load_run_scene(info: RunInfo, audio_features: str) -> Scene:
    """The scene of a finished run (its window, its dataset's tracks, the avatar's audio features)."""
    try:
        return load_scene(info.data, run_window(info), audio_features)
    except UserError as exc:
        raise UserError(f"run {info.run} was fitted on a dataset that cannot be used: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Pixels, decoded once where needed


@dataclass(frozen=True)
class WindowFrame:
    """One dataset frame cropped and resampled to the window (uint8, on the CPU)."""

    image: torch.Tensor  # [S, S, 3]
    background: torch.Tensor  # [S, S, 3]: the frame outside the head, the plate inside it
    head: torch.Tensor  # [S, S] (255 = head: face + hair + mouth)
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
    """Crops dataset frames (and their label maps) to a window, the plate inside the head."""

    def __init__(self, window: Window, plate: np.ndarray):
        w = window
        self.window = window
        self.crop = (slice(w.y0, w.y0 + w.side), slice(w.x0, w.x0 + w.side))
        self.plate = torch.from_numpy(np.ascontiguousarray(plate[self.crop]))  # [side, side, 3]
        self.heads = torch.tensor(HEAD_LABELS, dtype=torch.uint8)

    def __call__(self, frame: np.ndarray, labels: np.ndarray) -> WindowFrame:
        """frame [H, W, 3] uint8, labels [H, W] uint8 -> the window's :class:`WindowFrame`."""
        f = torch.from_numpy(np.ascontiguousarray(frame[self.crop]))
        lab = torch.from_numpy(np.ascontiguousarray(labels[self.crop]))
        h = torch.isin(lab, self.heads)
        m = lab == Label.MOUTH
        bg = torch.where(h[..., None], self.plate, f)
        S = self.window.size
        if self.window.side == S:  # no resampling: keep uint8
            return WindowFrame(f, bg, h.to(torch.uint8) * 255, m.to(torch.uint8) * 255)
        stack = torch.cat([f, bg, h[..., None].to(torch.uint8) * 255, m[..., None].to(torch.uint8) * 255], -1)
        stack = downsample(stack.float(), S).round().clamp(0, 255).to(torch.uint8)
        return WindowFrame(stack[..., :3], stack[..., 3:6], stack[..., 6], stack[..., 7])


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
    cropper = WindowCropper(scene.window, read_plate(scene.data_dir, scene.frame_size))
    return {i: cropper(frame, labels) for i, frame, labels in iter_dataset_frames(scene.data_dir, indices)}

"""``avatar3d fit DATA -o RUN``: fit a deformable Gaussian avatar to a preprocessed dataset.

The image window: ``tiny`` (128²) and ``small`` (256²) fit a square window around the head (the
union of the head masks over the clip, plus a margin) resampled to ``image_size``; ``default`` fits
the whole frame at the dataset's resolution. Each step renders one training frame with its tracked
head pose as the camera and its tracked blendshapes as the motion code, composites the head over
that frame's own torso/background (the background plate inside the head region), and takes the loss
on the dilated head region (face + hair + mouth labels): ``(1 - w_ssim) * L1 + w_ssim * D-SSIM``
with extra weight on the inside of the mouth, plus a small alpha term, a branch term
(:func:`branch_loss`: teeth and tongue come from the mouth branch, lips and skin from the face
branch), a landmark guidance term (:func:`landmark_guidance`: the deformation field carries the
canonical lip landmarks onto the frame's tracked ones) and, on frames whose mouth is shut, a
shut-lip cover (:func:`shut_cover_loss`: from head poses turned a few degrees, the face branch
alone must hide the mouth branch around the lips).

RUN is built in ``.RUN.partial`` beside it (checkpoints land there, atomically) and renamed at
the end; ``--resume`` continues a killed fit from its last checkpoint. A finished RUN holds::

    config.json     the FitConfig and the FitParams used (read back with a JSON loader)
    avatar.json     the avatar's spec; avatar.pt its weights (see avatar3d.gaussian.avatar.Avatar.load)
    avatar.ply      the canonical Gaussians as a standard 3DGS .ply
    metrics.json    val-split PSNR / SSIM (full window and head region), LMD (mouth, px), timings
    val.png         val frames, rows of prediction | truth | error (mouth closed ... open)
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from avatar3d import fsutil
from avatar3d.gaussian.avatar import Avatar, AvatarSpec, Conditioning, composite, downsample
from avatar3d.core.dataset import DatasetPaths, Label, blendshape_index, load_tracks, read_manifest
from avatar3d.gaussian.deform import MOUTH_CODE_NAMES, DeformConfig
from avatar3d.device import resolve_device
from avatar3d.errors import UserError
from avatar3d.gaussian.gaussians import DensifyStrategy, Gaussians, StrategyConfig, make_optimizer
from avatar3d.drive.metrics import MOUTH_LANDMARKS, crop_to_ssim, detect_landmarks, lmd, psnr, ssim, ssim_map
from avatar3d.gaussian.rasterize import Backend, Camera
from avatar3d.drive.sync import mouth_opening

CHECKPOINT = "checkpoint.pt"
CONFIG_FILE = "config.json"
PRIOR_FILE = "prior.pt"  # the identity's fine-tuned audio-to-motion prior
REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
INNER_LIPS = MOUTH_LANDMARKS[20:]
SUBNASALE = 2  # mediapipe face-mesh landmark at the base of the nose: where the lower face begins


@dataclass(frozen=True)
class FitParams:
    """Hyper-parameters of a fit (a preset). Copy configs/fit_<preset>.json to change them."""

    steps: int = 12_000
    """Optimisation steps (one training frame per step)."""
    window: Literal["head", "full"] = "full"
    """Fit a square window around the head ("head") or the whole frame ("full")."""
    image_size: int = 0
    """Side of the fitted images in pixels; 0 = the dataset's frame size."""
    head_margin: float = 0.05
    """Margin around the union of the head masks for window="head" (fraction of its side)."""
    num_face: int = 20_000
    """Initial number of face Gaussians (landmark-seeded + carved from the head box)."""
    num_mouth: int = 2_000
    """Number of inside-of-the-mouth Gaussians."""
    init_opacity: float = 0.3
    """Initial opacity of the Gaussians."""
    lr_means: float = 2e-4
    """Learning rate of the Gaussian centres, times the head extent (cm); decays 100x over the fit."""
    lr_log_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 5e-3
    lr_motion_basis: float = 1e-2
    lr_grid: float = 1e-2
    """Learning rate of the hash-grid embeddings."""
    lr_mlp: float = 2e-3
    """Learning rate of the deformation MLPs."""
    w_ssim: float = 0.2
    """Weight of D-SSIM in the photometric loss (the rest is L1)."""
    w_mouth: float = 2.0
    """Extra loss weight on inside-of-the-mouth pixels (on top of the head-region weight 1)."""
    w_alpha: float = 0.05
    """Weight of the alpha term: head alpha should be 1 on the head mask and 0 off it."""
    w_deform: float = 1e-3
    """Weight of the penalty on the size of the face deformation (keeps the canonical head useful)."""
    w_branches: float = 0.2
    """Weight of the branch decomposition: inside the mouth mask the face branch's share of alpha
    should be 0, outside it (in the head region) the mouth branch's share should be 0, so teeth
    and tongue are drawn by the mouth branch and lips and skin by the face branch."""
    swap_other_channels: float = 0.5
    """Probability per step that the blendshapes the audio prior does not drive (eyes, brows,
    nose: all but ``avatar3d.audio.prior.MOTION_NAMES``) come from another random training frame. At
    render time they do (the pose trajectory's frames), so the field must not learn to read the
    mouth's shape from them (on Obama it did: shut-mouth codes with an open frame's eye/brow
    channels rendered a mouth opening of 0.054 instead of 0.020)."""
    w_landmarks: float = 1.0
    """Weight of the lip-landmark guidance: the face deformation field, evaluated at the canonical
    lip landmarks, must carry them onto the frame's tracked 2D ones (Charbonnier distance as a
    fraction of the window side). It tells the lips where to go, so they close over the inside
    of the mouth when the tracker says the mouth is shut."""
    w_shut_cover: float = 1.0
    """Weight of the shut-lip cover: on training frames whose mouth mask is empty, the mouth
    branch's share of alpha over a box around the lips, seen from the frame's head pose turned
    by up to ``shut_jitter_deg`` in pitch and yaw, mean squared (:func:`shut_cover_loss`). Only
    the face branch gets its gradient, so the lips close over the mouth branch from poses near
    the pauses' ones too while the mouth branch stays behind them as it was trained. Without
    it a `small` avatar of the CNN clip showed the mouth branch through a seam between its
    shut lips, parted by a head pitched 1-3 degrees from the pauses' poses (BENCHMARKS #6)."""
    shut_jitter_deg: float = 3.0
    """Largest pitch/yaw turn of the head for the shut-lip cover (degrees)."""
    dilate_px: int = 5
    """Dilation of the head mask for the loss region, in pixels of the fitted image."""
    audio_features: str = ""
    """Audio features (features/<name>.npy) to condition on besides the motion code; "" = none."""
    audio_window: int = 8
    """Audio frames around each video frame given to the deformation field."""
    deform: DeformConfig = field(default_factory=DeformConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    checkpoint_every: int = 1000
    """Steps between checkpoints."""
    log_every: int = 25
    """Steps between progress-bar updates."""
    prior_finetune_steps: int = 300
    """Steps fine-tuning the shipped audio-to-motion prior on this identity's train split
    (written to RUN/prior.pt, used by render/eval); 0 = keep the generic prior."""
    seed: int = 0
    """Seed of this fit's random generator (frame order, initialisation, splits)."""
    backend: Backend = "auto"
    """Rasterizer: gsplat on CUDA when installed, else the dense PyTorch one."""

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, FitParams] = {
    "default": FitParams(),
    "tiny": FitParams(
        steps=1200,
        window="head",
        image_size=128,
        num_face=2500,
        num_mouth=750,  # draws the whole inside of the mouth (not densified); see BENCHMARKS (branch band)
        lr_means=5e-4,
        deform=DeformConfig(num_levels=6, log2_table_size=13, max_resolution=256, hidden=48, cond_dim=24),
        strategy=StrategyConfig(
            refine_start=300, refine_stop=900, refine_every=100, reset_every=0, grad_threshold=0.0003,
            split_scale=0.02, max_gaussians=5000,
        ),
        checkpoint_every=200,
        prior_finetune_steps=60,
    ),
}
# tiny at 256² and twice the steps: the CPU preset for a real clip whose shut mouth matters. At
# 128² a shut lip line is under a pixel, and tiny avatars render it parted (CNN, seed 0: shut val
# frames 0.0187 against the real frames' 0.0035); at 256² they render it about as the real frames
# read (seeds 0-3: 0.0022-0.0044 against 0.0030). With the shut-lip cover and the code clamped
# to its training range, 2 s of silence read 0.0017-0.0025 on seeds 0-3 against the bound 0.0035
# (BENCHMARKS.md, session 11). About 17-19 min on one CPU thread.
PRESETS["small"] = replace(
    PRESETS["tiny"],
    steps=2400,
    image_size=256,
    strategy=replace(PRESETS["tiny"].strategy, refine_stop=1800),
    checkpoint_every=400,
)
# The demo's preset: tiny at half the steps, so `make demo` ends within minutes on 2 CPU cores.
PRESETS["demo"] = replace(
    PRESETS["tiny"],
    steps=600,
    strategy=replace(PRESETS["tiny"].strategy, refine_start=150, refine_stop=450, refine_every=50),
    checkpoint_every=100,
)


def _from_json(cls, obj, where: str):
    """Build dataclass ``cls`` from a JSON object, recursively; unknown or mistyped keys -> UserError."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown {cls.__name__} keys {unknown}")
    kwargs = {}
    defaults = cls()
    for name, value in obj.items():
        default = getattr(defaults, name)
        if is_dataclass(default):
            kwargs[name] = _from_json(type(default), value, f"{where}.{name}")
        elif isinstance(default, bool) or not isinstance(default, (int, float, str)):
            kwargs[name] = value
        elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            kwargs[name] = float(value)
        elif type(value) is not type(default):
            raise UserError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def params_from_json(obj: dict, where: str = "fit params") -> FitParams:
    return _from_json(FitParams, obj, where)


def resolve_preset(preset: str) -> FitParams:
    """A preset name (tiny, small, demo, default) or the path of a JSON file of FitParams."""
    if preset in PRESETS:
        return PRESETS[preset]
    path = Path(preset)
    if not path.is_file():
        raise UserError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)} or the path of a JSON file")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read preset {path}: {exc}") from None
    return params_from_json(obj, str(path))


@dataclass(frozen=True)
class FitConfig:
    """Fit a 3D Gaussian avatar to a dataset made by `avatar3d preprocess`."""

    data: tyro.conf.Positional[Path]
    """Dataset folder (from `avatar3d preprocess`)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """Run folder to write (replaced when the fit completes)."""
    preset: str = "default"
    """Hyper-parameters: tiny (CPU, minutes), small (CPU, ~17 min, 256²: sharper lips), demo, default
    (GPU), or a JSON file (copy configs/fit_*.json)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device to fit on; auto = cuda when available, else cpu."""
    resume: bool = False
    """Continue a killed fit of OUTPUT from its last checkpoint (its saved parameters are used)."""
    progress: bool = True
    """Show a progress bar."""
    threads: int = 1
    """CPU threads for PyTorch (0 = PyTorch's default). One by default: on a busy 2-core machine the
    tiny preset ran 5 steps/s with 1 thread and 0.2 steps/s with 2 (thread oversubscription)."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Window:
    """The square part of the dataset frames that is fitted: ``[x0, x0+side)^2`` at ``size``^2."""

    x0: int
    y0: int
    side: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side


@dataclass(frozen=True)
class FitData:
    """A dataset resampled to the fit window (images on the CPU as uint8)."""

    window: Window
    frame_size: int
    images: torch.Tensor  # [N, S, S, 3] uint8
    backgrounds: torch.Tensor  # [N, S, S, 3] uint8: frame outside the head, plate inside
    head: torch.Tensor  # [N, S, S] uint8 (255 = head: face + hair + mouth)
    mouth: torch.Tensor  # [N, S, S] uint8 (255 = inside of the mouth)
    motion: torch.Tensor  # [N, 52] blendshapes
    audio: torch.Tensor | None  # [N, A] audio features per frame, flattened
    K: torch.Tensor  # [3, 3] intrinsics of the window
    R: torch.Tensor  # [N, 3, 3]
    t: torch.Tensor  # [N, 3]
    landmarks: np.ndarray  # [N, 478, 2] tracked landmarks in window pixels
    canonical: torch.Tensor  # [478, 3] head-space cm, mouth shut (closed_mouth_canonical)
    train: np.ndarray  # [T] frame indices used for training (tracked ones)
    val: np.ndarray  # [V] frame indices of the val split (tracked ones)

    def camera(self, i: int, device) -> Camera:
        return Camera.from_pose(self.K, self.R[i], self.t[i], self.window.size, self.window.size, device)

    def conditioning(self, i: int, audio_window: int, device) -> Conditioning:
        motion = self.motion[i : i + 1]
        audio = None
        if self.audio is not None:
            n = self.audio.shape[0]
            idx = torch.arange(i - audio_window // 2, i - audio_window // 2 + audio_window).clamp(0, n - 1)
            audio = self.audio[idx][None]  # [1, W, A]
        return Conditioning(motion, audio).to(device)


def _head_window(head_union: np.ndarray, margin: float, frame_size: int) -> tuple[int, int, int]:
    ys, xs = np.nonzero(head_union)
    if len(xs) == 0:
        raise UserError("the dataset's masks contain no head pixels: rerun preprocess")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(math.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = min(side, frame_size)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x = int(round(min(max(cx - side / 2, 0), frame_size - side)))
    y = int(round(min(max(cy - side / 2, 0), frame_size - side)))
    return x, y, side


def load_fit_data(data_dir: Path, params: FitParams) -> FitData:
    """Read a dataset and resample it to the fit window."""
    from avatar3d.core.masks import iter_masks
    from avatar3d.core.video import iter_frames

    import cv2

    paths = DatasetPaths(Path(data_dir))
    manifest = read_manifest(paths.root)
    tracks = load_tracks(paths.root)
    missing = [k for k in ("landmarks", "blendshapes", "valid", "K", "R", "t", "canonical") if k not in tracks]
    if missing:
        raise UserError(f"dataset {paths.root} lacks tracks {missing}: rerun `avatar3d preprocess`")
    for p in (paths.frames, paths.masks, paths.background):
        if not p.is_file():
            raise UserError(f"dataset {paths.root} has no {p.name}: rerun `avatar3d preprocess`")
    n, size = manifest.num_frames, manifest.size
    plate = cv2.imread(str(paths.background), cv2.IMREAD_COLOR)
    if plate is None or plate.shape[:2] != (size, size):
        raise UserError(f"{paths.background} is unreadable or not {size}x{size}")
    plate = torch.from_numpy(np.ascontiguousarray(plate[..., ::-1]))

    head_labels = torch.tensor([Label.FACE, Label.HAIR, Label.MOUTH], dtype=torch.uint8)
    if params.window == "head":
        count = np.zeros((size, size), np.int32)
        for labels in iter_masks(paths.masks):
            count += np.isin(labels, head_labels.numpy())
        # pixels that are head in at least 2% of the frames (ignores one-frame mask noise)
        x0, y0, side = _head_window(count >= max(1, 0.02 * n), params.head_margin, size)
    else:
        x0, y0, side = 0, 0, size
    S = params.image_size or side
    window = Window(x0, y0, side, S)

    images = torch.empty(n, S, S, 3, dtype=torch.uint8)
    backgrounds = torch.empty_like(images)
    head = torch.empty(n, S, S, dtype=torch.uint8)
    mouth = torch.empty_like(head)
    crop = (slice(y0, y0 + side), slice(x0, x0 + side))
    plate_c = plate[crop]
    count = 0
    for i, (frame, labels) in enumerate(zip(iter_frames(paths.frames), iter_masks(paths.masks))):
        if i >= n:
            break
        f = torch.from_numpy(np.ascontiguousarray(frame[crop]))
        lab = torch.from_numpy(np.ascontiguousarray(labels[crop]))
        h = torch.isin(lab, head_labels)
        m = lab == Label.MOUTH
        bg = torch.where(h[..., None], plate_c, f)
        if side == S:  # no resampling: keep uint8
            images[i], backgrounds[i], head[i], mouth[i] = f, bg, h.to(torch.uint8) * 255, m.to(torch.uint8) * 255
        else:
            stack = torch.cat([f, bg, h[..., None].to(torch.uint8) * 255, m[..., None].to(torch.uint8) * 255], -1)
            stack = downsample(stack.float(), S).round().clamp(0, 255).to(torch.uint8)
            images[i], backgrounds[i] = stack[..., :3], stack[..., 3:6]
            head[i], mouth[i] = stack[..., 6], stack[..., 7]
        count += 1
    if count != n:
        raise UserError(f"dataset {paths.root}: frames.mp4/masks.mkv hold {count} frames, manifest says {n}")

    s = window.scale
    K = torch.as_tensor(tracks["K"], dtype=torch.float32)
    Kw = Camera(K, torch.eye(4), size, size).crop_resize(x0, y0, side, S).K
    lm = tracks["landmarks"][..., :2].astype(np.float32)
    lm_w = (lm - np.array([x0, y0], np.float32)) * s
    ok = tracks["valid"].astype(bool) | tracks.get("interpolated", np.zeros(n, bool)).astype(bool)
    train = np.array([i for i in manifest.frame_indices("train") if ok[i]])
    val = np.array([i for i in manifest.frame_indices("val") if ok[i]])
    if len(train) == 0 or len(val) == 0:
        raise UserError(f"dataset {paths.root} has no tracked frames in its train or val split")
    audio = None
    if params.audio_features:
        fpath = paths.features(params.audio_features)
        if not fpath.is_file():
            raise UserError(f"dataset {paths.root} has no audio features {fpath.name}: rerun preprocess")
        feats = np.load(fpath)
        if feats.shape[0] != n:
            raise UserError(f"{fpath} has {feats.shape[0]} frames, the dataset {n}")
        audio = torch.from_numpy(feats.reshape(n, -1).astype(np.float32))
    return FitData(
        window=window, frame_size=size, images=images, backgrounds=backgrounds, head=head, mouth=mouth,
        motion=torch.from_numpy(tracks["blendshapes"].astype(np.float32)), audio=audio, K=Kw,
        R=torch.from_numpy(tracks["R"].astype(np.float32)), t=torch.from_numpy(tracks["t"].astype(np.float32)),
        landmarks=lm_w, canonical=torch.from_numpy(closed_mouth_canonical(tracks, train)), train=train, val=val,
    )


CLOSED_MOUTH_PERCENTILE = 10.0  # frames with the lowest lip opening that shape the canonical face


def closed_mouth_canonical(tracks: dict, frames: np.ndarray) -> np.ndarray:
    """The dataset's canonical face with its mouth shut: ``[478, 3]`` float32 head-space cm.

    preprocess's canonical face is the clip's mean shape, so its lips are parted (CNN: opening
    0.035, more than the clip's median 0.029) and the Gaussians were seeded around an open mouth.
    Seeding them around a shut one raised the tiny CNN avatar's val head PSNR on 3 of 3 seeds
    (+0.02 to +0.64 dB, mean +0.34); it did not shut that avatar's mouth in silence (see
    BENCHMARKS.md, seed study).
    The non-rigid landmarks are replaced by their mean over the ``frames`` whose inner-lip opening
    is in the lowest ``CLOSED_MOUTH_PERCENTILE`` %: each such frame's tracked 2D landmark is
    back-projected at the depth its canonical point has in that frame's camera, into head space.
    The rigid landmarks (the head frame) are kept.
    """
    from avatar3d.preprocess.pose import RIGID_LANDMARKS

    canonical = tracks["canonical"].astype(np.float64)  # [478, 3]
    opening = mouth_opening(tracks["landmarks"][frames])
    ok = np.isfinite(opening)
    if ok.sum() < 2:
        return canonical.astype(np.float32)
    shut = np.asarray(frames)[ok][opening[ok] <= np.percentile(opening[ok], CLOSED_MOUTH_PERCENTILE)]
    K = tracks["K"].astype(np.float64)
    R, t = tracks["R"][shut].astype(np.float64), tracks["t"][shut].astype(np.float64)  # [F, 3, 3], [F, 3]
    depth = np.einsum("fij,nj->fni", R, canonical)[..., 2] + t[:, None, 2]  # [F, 478] cm
    uv1 = np.concatenate([tracks["landmarks"][shut][..., :2], np.ones((len(shut), canonical.shape[0], 1))], -1)
    cam = (uv1 @ np.linalg.inv(K).T) * depth[..., None]  # [F, 478, 3] camera space
    head = np.einsum("fji,fnj->fni", R, cam - t[:, None, :])  # R^T (p - t)
    closed = head.mean(0)
    rigid = list(RIGID_LANDMARKS)
    closed[rigid] = canonical[rigid]
    return closed.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Initialisation


def _head_frame(data: FitData) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthonormal head frame (right, up, forward towards the camera) [3, 3] rows, and the face centre."""
    centre = data.canonical.mean(0)
    cams = -(data.R.transpose(1, 2) @ data.t[..., None])[..., 0]  # [N, 3] camera centres
    fwd = F.normalize(cams[data.train].mean(0) - centre, dim=0)
    up = (data.R[data.train].transpose(1, 2) @ torch.tensor([0.0, -1.0, 0.0]))[..., :].mean(0)
    up = F.normalize(up - (up @ fwd) * fwd, dim=0)
    right = torch.linalg.cross(up, fwd)
    return torch.stack([right, up, fwd]), centre


def _project(points: torch.Tensor, data: FitData, i: int, R: torch.Tensor | None = None) -> torch.Tensor:
    """Window pixel positions of head-space points in frame i (on the points' device), with the
    frame's head rotation or ``R`` [3, 3] in its place. [P, 3] -> [P, 2]"""
    dev = points.device
    R = data.R[i] if R is None else R
    pc = points @ R.to(dev).T + data.t[i].to(dev)
    uv = pc @ data.K.to(dev).T
    return uv[:, :2] / uv[:, 2:].clamp(min=1e-6)


def _sample_colors(points: torch.Tensor, data: FitData, frames: np.ndarray) -> torch.Tensor:
    """Mean colour of the points' projections over some frames. [P, 3] -> [P, 3] in [0, 1]"""
    acc = torch.zeros(points.shape[0], 3)
    S = data.window.size
    for i in frames:
        uv = _project(points, data, int(i)).round().long().clamp(0, S - 1)
        acc += data.images[int(i)][uv[:, 1], uv[:, 0]].float() / 255
    return acc / len(frames)


def init_avatar(data: FitData, params: FitParams, generator: torch.Generator) -> Avatar:
    """Face Gaussians on the tracked canonical landmarks and carved from the head box by the head
    masks (visual hull), mouth Gaussians in a cavity behind the inner lips."""
    axes, centre = _head_frame(data)
    lm = data.canonical
    local = (lm - centre) @ axes.T  # [478, 3] in (right, up, forward)
    lo, hi = local.min(0).values, local.max(0).values
    w = float(hi[0] - lo[0])
    box_lo = torch.stack([lo[0] - 0.3 * w, lo[1] - 0.15 * w, hi[2] - 1.1 * w])
    box_hi = torch.stack([hi[0] + 0.3 * w, hi[1] + 0.6 * w, hi[2] + 0.05 * w])

    # Inside of the mouth: an ellipsoid behind the inner lip contour (mouth branch only).
    lips = (lm[list(INNER_LIPS)] - centre) @ axes.T
    mc = lips.mean(0) + torch.tensor([0.0, 0.0, -0.1 * w])
    lip_w = float(lips[:, 0].max() - lips[:, 0].min())
    radii = torch.tensor([0.55 * lip_w, 0.08 * w, 0.08 * w])

    frames = data.train[np.linspace(0, len(data.train) - 1, min(16, len(data.train))).astype(int)]
    S = data.window.size
    n_lm = min(params.num_face // 3, 4 * lm.shape[0])
    n_box = params.num_face - n_lm
    cand = box_lo + (box_hi - box_lo) * torch.rand(n_box * 8, 3, generator=generator)
    cand_world = cand @ axes + centre
    inside = torch.zeros(cand.shape[0])
    for i in frames:
        uv = _project(cand_world, data, int(i)).round().long()
        ok = (uv >= 0).all(1) & (uv < S).all(1)
        uvc = uv.clamp(0, S - 1)
        head = data.head[int(i)].float()[None, None] / 255
        head = F.max_pool2d(head, 5, stride=1, padding=2)[0, 0]  # a little slack
        inside += ok.float() * (head[uvc[:, 1], uvc[:, 0]] > 0.5).float()
    in_mouth = (((cand - mc) / (1.3 * radii)) ** 2).sum(1) < 1  # left to the mouth branch
    keep = ((inside >= 0.9 * len(frames)) & ~in_mouth).nonzero().squeeze(1)
    keep = keep[torch.randperm(len(keep), generator=generator)[:n_box]]
    box_pts = cand_world[keep]
    reps = max(1, n_lm // lm.shape[0])
    jitter = 0.02 * w * torch.randn(reps, *lm.shape, generator=generator)
    lm_pts = (lm[None] + jitter).reshape(-1, 3)
    pts = torch.cat([lm, lm_pts, box_pts])[: params.num_face]
    nn_dist = torch.cdist(pts, pts).topk(4, largest=False).values[:, 1:].mean(1)
    scale = nn_dist.clamp(min=0.002 * w, max=0.03 * w)
    face = Gaussians.init(pts, _sample_colors(pts, data, frames), scale, params.init_opacity)

    u = torch.randn(params.num_mouth, 3, generator=generator)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(params.num_mouth, 1, generator=generator) ** (1 / 3)
    m_local = mc + u * radii
    m_pts = m_local @ axes + centre
    m_cols = torch.tensor([0.3, 0.12, 0.12]).expand(params.num_mouth, 3)
    mouth = Gaussians.init(
        m_pts, m_cols, 0.02 * w, 0.5,
        extra={"motion_basis": torch.zeros(params.num_mouth, 3 * len(MOUTH_CODE_NAMES))},
    )
    corners = torch.stack(torch.meshgrid(*[torch.stack([box_lo[k], box_hi[k]]) for k in range(3)], indexing="ij"), -1)
    corners = corners.reshape(-1, 3) @ axes + centre
    audio_dim = 0 if data.audio is None else int(data.audio.shape[1])
    spec = AvatarSpec(
        deform=params.deform,
        box_min=tuple(float(v) for v in corners.min(0).values),
        box_max=tuple(float(v) for v in corners.max(0).values),
        audio_features=params.audio_features,
        audio_window=params.audio_window if params.audio_features else 0,
        audio_dim=audio_dim,
    )
    avatar = Avatar(spec, face, mouth)
    avatar.face_deform.reset_parameters(generator)
    avatar.face_deform.set_motion_stats(data.motion[torch.from_numpy(data.train)])
    avatar.face_deform.set_lower_face(float(data.canonical[SUBNASALE, 1]))
    return avatar


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class Target:
    """One frame's fit target on the device."""

    image: torch.Tensor  # [S, S, 3] float in [0, 1]
    background: torch.Tensor  # [S, S, 3]
    head: torch.Tensor  # [S, S] soft head mask
    mouth: torch.Tensor  # [S, S] soft mouth mask
    region: torch.Tensor  # [S, S] dilated head region (loss support)


def make_target(data: FitData, i: int, dilate_px: int, device) -> Target:
    head = data.head[i].to(device).float() / 255
    k = 2 * dilate_px + 1
    region = F.max_pool2d(head[None, None], k, stride=1, padding=dilate_px)[0, 0] if dilate_px else head
    return Target(
        image=data.images[i].to(device).float() / 255,
        background=data.backgrounds[i].to(device).float() / 255,
        head=head,
        mouth=data.mouth[i].to(device).float() / 255,
        region=(region > 0.01).float(),
    )


def fit_loss(pred: torch.Tensor, alpha: torch.Tensor, target: Target, params: FitParams) -> torch.Tensor:
    """pred [S, S, 3] composited, alpha [S, S, 1] -> scalar loss (see module docstring)."""
    weight = target.region + params.w_mouth * target.mouth  # [S, S]
    l1 = ((pred - target.image).abs().mean(-1) * weight).sum() / weight.sum().clamp(min=1)
    wc = crop_to_ssim(weight)
    dssim = ((1 - ssim_map(pred, target.image)) * wc).sum() / wc.sum().clamp(min=1)
    a = ((alpha[..., 0] - target.head) ** 2 * target.region).sum() / target.region.sum().clamp(min=1)
    return (1 - params.w_ssim) * l1 + params.w_ssim * dssim + params.w_alpha * a


def swap_other_channels(cond: Conditioning, other: torch.Tensor) -> Conditioning:
    """``cond`` with the blendshapes outside the prior's motion code (``MOTION_INDEX``) taken from
    ``other`` [52] (another frame's blendshapes)."""
    from avatar3d.audio.prior import MOTION_INDEX

    keep = torch.zeros(cond.motion.shape[-1], dtype=torch.bool, device=cond.motion.device)
    keep[list(MOTION_INDEX)] = True
    return Conditioning(torch.where(keep, cond.motion, other), cond.audio)


BRANCH_BAND = 2 / 512  # band around the mouth mask's edge left to either branch (the lips' inner
# rim), as a fraction of the window side: 2 px at 512². A fixed 2 px band left the whole mouth to
# either branch at 128² (CNN's mouth mask is at most 6 px tall there: nothing was deep inside it).


def branch_loss(face_alpha: torch.Tensor, mouth_alpha: torch.Tensor, target: Target) -> torch.Tensor:
    """Face/mouth decomposition: the face branch's alpha share deep inside the mouth mask and the
    mouth branch's share in the head region away from it, mean squared over each region (scalar).
    A band of ``BRANCH_BAND`` x the window side around the (soft, resampled) mask's edge is left
    free: the mask is eroded by that many pixels rounded down (face side) and dilated by it rounded
    up (mouth side). face_alpha, mouth_alpha: [S, S, 1]."""
    band = BRANCH_BAND * target.mouth.shape[-1]
    erode, dilate = math.floor(band), math.ceil(band)
    m = target.mouth[None, None]
    near = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)[0, 0]
    deep = -F.max_pool2d(-m, 2 * erode + 1, stride=1, padding=erode)[0, 0]
    inside = (deep > 0.9).float()
    outside = target.region * (near < 0.01).float()
    face_in = (face_alpha[..., 0] ** 2 * inside).sum() / inside.sum().clamp(min=1)
    mouth_out = (mouth_alpha[..., 0] ** 2 * outside).sum() / outside.sum().clamp(min=1)
    return face_in + mouth_out


def turned(R: torch.Tensor, pitch_deg: float, yaw_deg: float) -> torch.Tensor:
    """The head rotation R [3, 3] turned about the head origin by a pitch (x) and a yaw (y). [3, 3]"""
    a, b = math.radians(pitch_deg), math.radians(yaw_deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return R @ (rx @ ry).to(R)


def lip_box(
    avatar: Avatar, data: FitData, i: int, cond: Conditioning, R: torch.Tensor, device
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` window pixels: the box of the canonical lip landmarks moved by the face
    deformation field and projected with frame i's camera and head rotation ``R``, grown by a
    quarter of its width on each side and clipped to the window (empty when off it)."""
    with torch.no_grad():
        lips = data.canonical[list(MOUTH_LANDMARKS)].to(device)
        uv = _project(lips + avatar.face_deform(lips, cond.motion, cond.audio).d_means[0], data, i, R)
    lo, hi = uv.min(0).values, uv.max(0).values
    grow = 0.25 * float(hi[0] - lo[0])
    S = data.window.size
    x0, y0 = (max(0, math.floor(float(v) - grow)) for v in lo)
    x1, y1 = (min(S, math.ceil(float(v) + grow)) for v in hi)
    return x0, y0, max(x0, x1), max(y0, y1)


def shut_cover_loss(
    avatar: Avatar, data: FitData, i: int, cond: Conditioning, g: dict[str, torch.Tensor], params: FitParams,
    generator: torch.Generator, device,
) -> torch.Tensor:
    """The mouth branch's alpha share, squared, averaged over frame i's :func:`lip_box`, rendered
    from frame i's head pose turned by a random pitch and yaw in +-``params.shut_jitter_deg``
    with the mouth Gaussians of ``g`` (frame i's :meth:`Avatar.deformed` attributes) detached:
    their share falls only by the face covering them. Only the box is rasterized. Scalar (see
    ``FitParams.w_shut_cover``)."""
    turn = (torch.rand(2, generator=generator) * 2 - 1) * params.shut_jitter_deg
    R = turned(data.R[i], float(turn[0]), float(turn[1]))
    x0, y0, x1, y1 = lip_box(avatar, data, i, cond, R, device)
    if x1 <= x0 or y1 <= y0:
        return data.K.new_zeros((), device=device)
    side = max(x1 - x0, y1 - y0)
    S = data.window.size
    cam = Camera.from_pose(data.K, R, data.t[i], S, S, device).crop_resize(x0, y0, side, side)
    nf = len(avatar.face)
    frozen = {k: torch.cat([v[:nf], v[nf:].detach()]) for k, v in g.items()}
    frozen["colors"] = avatar.is_mouth(frozen["colors"])
    out = avatar.draw(frozen, cam, params.backend)
    return (out.rgb[: y1 - y0, : x1 - x0, 0] ** 2).mean()


def landmark_guidance(avatar: Avatar, data: FitData, i: int, cond: Conditioning, device) -> torch.Tensor:
    """Distance between the canonical lip landmarks (``MOUTH_LANDMARKS``) moved by the face
    deformation field and frame i's tracked ones, projected with frame i's camera: mean
    Charbonnier distance as a fraction of the window side (scalar).

    Only the deformation field is supervised (the landmarks are points in its domain, not
    Gaussians), so densify/prune never disturbs it; Gaussians near a landmark move with it.
    """
    idx = list(MOUTH_LANDMARKS)
    canonical = data.canonical[idx].to(device)  # [L, 3]
    d = avatar.face_deform(canonical, cond.motion, cond.audio)
    uv = _project(canonical + d.d_means[0], data, i)  # [L, 2] window pixels
    tracked = torch.from_numpy(data.landmarks[i][idx]).to(device)  # [L, 2]
    ok = torch.isfinite(tracked).all(-1)
    err = (uv[ok] - tracked[ok]) / data.window.size
    return torch.sqrt((err**2).sum(-1) + 1e-6).mean() if bool(ok.any()) else uv.sum() * 0


@dataclass
class Trainer:
    """The optimisation state of one fit (all of it goes into the checkpoint)."""

    avatar: Avatar
    opt_face: torch.optim.Optimizer
    opt_mouth: torch.optim.Optimizer
    opt_net: torch.optim.Optimizer
    strategy: DensifyStrategy
    generator: torch.Generator
    extent: float
    step: int = 0

    @staticmethod
    def create(avatar: Avatar, params: FitParams, extent: float, generator: torch.Generator, device) -> "Trainer":
        lrs = {
            "means": params.lr_means * extent, "log_scales": params.lr_log_scales, "quats": params.lr_quats,
            "opacities": params.lr_opacities, "sh0": params.lr_sh0, "motion_basis": params.lr_motion_basis,
        }
        grid = [p for n, p in avatar.face_deform.named_parameters() if n.startswith("grid.")]
        mlp = [p for n, p in avatar.face_deform.named_parameters() if not n.startswith("grid.")]
        opt_net = torch.optim.Adam(
            [{"params": grid, "lr": params.lr_grid, "name": "grid"}, {"params": mlp, "lr": params.lr_mlp, "name": "mlp"}],
            eps=1e-15,
        )
        strategy = DensifyStrategy(params.strategy, len(avatar.face), extent, device)
        return Trainer(
            avatar, make_optimizer(avatar.face, lrs), make_optimizer(avatar.mouth, lrs), opt_net, strategy,
            generator, extent,
        )

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "avatar": self.avatar.state_dict(),
            "opt_face": self.opt_face.state_dict(),
            "opt_mouth": self.opt_mouth.state_dict(),
            "opt_net": self.opt_net.state_dict(),
            "strategy": self.strategy.state.state_dict(),
            "generator": self.generator.get_state(),
            "extent": self.extent,
        }

    @staticmethod
    def from_state(state: dict, spec: AvatarSpec, params: FitParams, device) -> "Trainer":
        avatar = Avatar.from_state(spec, state["avatar"]).to(device)
        generator = torch.Generator()
        generator.set_state(state["generator"])
        trainer = Trainer.create(avatar, params, float(state["extent"]), generator, device)
        trainer.opt_face.load_state_dict(state["opt_face"])
        trainer.opt_mouth.load_state_dict(state["opt_mouth"])
        trainer.opt_net.load_state_dict(state["opt_net"])
        trainer.strategy.load_state_dict(state["strategy"])
        trainer.step = int(state["step"])
        return trainer

    def set_lr(self, params: FitParams) -> None:
        """Exponential decay of the centres' learning rate (to 1% at the last step)."""
        frac = min(self.step / max(params.steps, 1), 1.0)
        lr = params.lr_means * self.extent * (0.01**frac)
        for opt in (self.opt_face, self.opt_mouth):
            for group in opt.param_groups:
                if group["name"] == "means":
                    group["lr"] = lr

    def train_step(self, data: FitData, params: FitParams, device) -> tuple[float, float]:
        """One optimisation step on a random training frame; returns (loss, head-region PSNR)."""
        self.set_lr(params)
        i = int(data.train[torch.randint(len(data.train), (1,), generator=self.generator)])
        target = make_target(data, i, params.dilate_px, device)
        cond = data.conditioning(i, params.audio_window, device)
        if params.swap_other_channels and float(torch.rand((), generator=self.generator)) < params.swap_other_channels:
            j = int(data.train[torch.randint(len(data.train), (1,), generator=self.generator)])
            cond = swap_other_channels(cond, data.motion[j].to(device))
        g, d = self.avatar.deformed(cond)
        out = self.avatar.draw(g, data.camera(i, device), params.backend, mouth_share=True)
        DensifyStrategy.retain(out.means2d)
        rgb, mouth_alpha = out.rgb[..., :3], out.rgb[..., 3:]
        pred = composite(torch.cat([rgb, out.alpha], -1), target.background)
        loss = fit_loss(pred, out.alpha, target, params)
        if params.w_branches:
            loss = loss + params.w_branches * branch_loss(out.alpha - mouth_alpha, mouth_alpha, target)
        if params.w_deform:
            loss = loss + params.w_deform * (d.d_means**2).sum(-1).mean()
        if params.w_landmarks:
            loss = loss + params.w_landmarks * landmark_guidance(self.avatar, data, i, cond, device)
        if params.w_shut_cover and int(data.mouth[i].max()) < 128:  # the mouth mask is empty: shut
            loss = loss + params.w_shut_cover * shut_cover_loss(
                self.avatar, data, i, cond, g, params, self.generator, device
            )
        for opt in (self.opt_face, self.opt_mouth, self.opt_net):
            opt.zero_grad(set_to_none=True)
        loss.backward()
        nf = len(self.avatar.face)
        grad2d = out.grad2d()
        if grad2d is not None:
            S = data.window.size
            self.strategy.accumulate(grad2d[:nf], out.radii[:nf], S, S)
        for opt in (self.opt_face, self.opt_mouth, self.opt_net):
            opt.step()
        self.step += 1
        self.strategy.step(self.avatar.face, self.opt_face, self.step, self.generator)
        with torch.no_grad():
            p = psnr(pred.detach(), target.image, target.head)
        return float(loss.detach()), float(p)


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def render_frame(avatar: Avatar, data: FitData, i: int, params: FitParams, device) -> torch.Tensor:
    """The composited prediction of frame i. [S, S, 3] in [0, 1]"""
    cond = data.conditioning(i, params.audio_window, device)
    rgba = avatar.render(cond, data.camera(i, device), params.backend)
    return composite(rgba, data.backgrounds[i].to(device).float() / 255).clamp(0, 1)


def evaluate(avatar: Avatar, data: FitData, params: FitParams, device, landmarks: bool = True) -> dict:
    """Val-split metrics at the fit resolution; returns the metrics and the predictions."""
    preds, rows = [], []
    for i in data.val:
        pred = render_frame(avatar, data, int(i), params, device).cpu()
        t = make_target(data, int(i), 0, "cpu")
        rows.append(
            (
                float(psnr(pred, t.image)), float(ssim(pred, t.image)),
                float(psnr(pred, t.image, t.head)), float(ssim(pred, t.image, t.head)),
            )
        )
        preds.append(pred)
    r = np.array(rows)
    S = data.window.size
    metrics = {
        "frames": len(data.val),
        "resolution": [S, S],
        "window": {"x0": data.window.x0, "y0": data.window.y0, "side": data.window.side,
                   "frame_size": data.frame_size},
        "psnr": float(r[:, 0].mean()),
        "ssim": float(r[:, 1].mean()),
        "psnr_head": float(r[:, 2].mean()),
        "ssim_head": float(r[:, 3].mean()),
    }
    if landmarks:
        up = max(1, math.ceil(384 / S))
        to_u8 = lambda x: (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()  # noqa: E731
        lm_pred = detect_landmarks([to_u8(p) for p in preds], upscale=up)[:, list(MOUTH_LANDMARKS)]
        lm_true = detect_landmarks([data.images[int(i)].numpy() for i in data.val], upscale=up)[:, list(MOUTH_LANDMARKS)]
        lm_track = data.landmarks[data.val][:, list(MOUTH_LANDMARKS)]
        s = data.window.scale  # window px per dataset px
        metrics["lmd_px"] = lmd(lm_pred, lm_track) / s
        metrics["lmd_truth_px"] = lmd(lm_true, lm_track) / s
        metrics["lmd_frames_detected"] = int(np.isfinite(lm_pred).all(axis=(1, 2)).sum())
        metrics["lmd_units"] = "dataset pixels (frames of frame_size), mouth landmarks vs tracked"
    return metrics, preds


def write_val_png(path: Path, data: FitData, preds: list[torch.Tensor], rows: int = 4) -> list[int]:
    """Rows of prediction | truth | |error| x4 for val frames from mouth closed to open."""
    import cv2

    jaw = data.motion[data.val, blendshape_index("jawOpen")].numpy()
    order = np.argsort(jaw)
    picks = sorted({int(order[int(round(q * (len(order) - 1)))]) for q in np.linspace(0, 1, rows)},
                   key=lambda k: jaw[k])
    panels = []
    for k in picks:
        truth = data.images[int(data.val[k])].float() / 255
        pred = preds[k]
        err = ((pred - truth).abs() * 4).clamp(0, 1)
        panels.append(torch.cat([pred, truth, err], 1))
    grid = (torch.cat(panels, 0) * 255).round().to(torch.uint8).numpy()
    S = data.window.size
    if S < 256:
        f = math.ceil(256 / S)
        grid = np.repeat(np.repeat(grid, f, 0), f, 1)
    with fsutil.atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(grid[..., ::-1])):
            raise OSError(f"could not write {path}")
    return [int(data.val[k]) for k in picks]


# ---------------------------------------------------------------------------------------------
# The command


def finetune_identity_prior(data_dir: Path, out: Path, steps: int, device) -> str:
    """Fine-tune the shipped audio-to-motion prior on the dataset's train split and save it to
    ``out`` (RUN/prior.pt). Returns a one-word description for metrics.json. Skipped (the generic
    prior is used) when ``steps`` is 0 or the dataset has no features for the prior's encoder."""
    from avatar3d.audio.prior import finetune_prior, load_prior, save_prior

    if steps <= 0:
        return "generic"
    prior = load_prior(None, "cpu")
    if not DatasetPaths(Path(data_dir)).features(prior.config.encoder).is_file():
        return "generic"
    tuned = finetune_prior(prior, [Path(data_dir)], steps=steps, device=device)
    save_prior(tuned.cpu(), out, getattr(tuned, "train_info", {}))
    return "finetuned"


def _save_checkpoint(work: Path, trainer: Trainer) -> None:
    with fsutil.atomic_path(work / CHECKPOINT) as tmp:
        torch.save(trainer.state_dict(), tmp)


def run_fit(config: FitConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Fit and write RUN (see module docstring). ``on_step(step)`` is called after each step."""
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = Path(config.output)
    work = fsutil.work_dir_for(out)
    if config.resume:
        if not (work / CHECKPOINT).is_file():
            raise UserError(f"nothing to resume: no checkpoint in {work} (start without --resume)")
        try:
            saved = json.loads((work / CONFIG_FILE).read_text())
            params = params_from_json(saved["params"], str(work / CONFIG_FILE))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot resume from {work}: {exc}") from None
    else:
        params = resolve_preset(config.preset)
        if work.exists():
            shutil.rmtree(work)
    data = load_fit_data(config.data, params)
    t0 = time.time()

    if config.resume:
        spec = AvatarSpec.from_json(json.loads((work / "avatar.json").read_text()))
        try:
            state = torch.load(work / CHECKPOINT, map_location=device, weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"corrupt checkpoint in {work}: {exc}") from None
        trainer = Trainer.from_state(state, spec, params, device)
        print(f"avatar3d fit: resuming {out} at step {trainer.step}/{params.steps}")
    else:
        work.mkdir(parents=True)
        generator = torch.Generator().manual_seed(params.seed)
        avatar = init_avatar(data, params, generator).to(device)
        extent = float(torch.tensor(avatar.spec.box_max).sub(torch.tensor(avatar.spec.box_min)).norm() / 2)
        trainer = Trainer.create(avatar, params, extent, generator, device)
        fsutil.write_json(work / CONFIG_FILE, {"fit": _config_json(config), "params": params.to_json()})
        fsutil.write_json(work / "avatar.json", avatar.spec.to_json())

    from tqdm import tqdm

    bar = tqdm(total=params.steps, initial=trainer.step, disable=not config.progress, desc="fit", unit="step",
               dynamic_ncols=True)
    recent: list[tuple[float, float]] = []
    while trainer.step < params.steps:
        recent.append(trainer.train_step(data, params, device))
        recent = recent[-params.log_every :]
        bar.update(1)
        if trainer.step % params.log_every == 0 or trainer.step == params.steps:
            loss, p = np.mean(recent, axis=0)
            bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{p:.2f}", n=len(trainer.avatar.face))
        if trainer.step % params.checkpoint_every == 0 and trainer.step < params.steps:
            _save_checkpoint(work, trainer)
        if on_step is not None:
            on_step(trainer.step)
    bar.close()
    fit_seconds = time.time() - t0

    avatar = trainer.avatar.eval()
    avatar.save(work)
    from avatar3d.gaussian.ply import write_ply

    write_ply(work / "avatar.ply", avatar.face, avatar.mouth)
    prior_info = finetune_identity_prior(config.data, work / PRIOR_FILE, params.prior_finetune_steps, device)
    t1 = time.time()
    metrics, preds = evaluate(avatar, data, params, device)
    metrics["val_png_frames"] = write_val_png(work / "val.png", data, preds)
    metrics.update(
        steps=params.steps, fit_seconds=round(fit_seconds, 1), eval_seconds=round(time.time() - t1, 1),
        num_face=len(avatar.face), num_mouth=len(avatar.mouth), device=str(device), prior=prior_info,
    )
    fsutil.write_json(work / "metrics.json", {k: _json_number(v) for k, v in metrics.items()})
    (work / CHECKPOINT).unlink(missing_ok=True)
    fsutil.commit_dir(work, out)
    print(
        f"avatar3d fit: {out}  val PSNR {metrics['psnr']:.2f} dB (head {metrics['psnr_head']:.2f}), "
        f"SSIM {metrics['ssim']:.3f} (head {metrics['ssim_head']:.3f}), LMD {metrics.get('lmd_px', math.nan):.2f} px "
        f"at {metrics['resolution'][0]}x{metrics['resolution'][1]}, {len(avatar.face) + len(avatar.mouth)} Gaussians, "
        f"fit {fit_seconds:.0f} s"
    )
    return metrics


def _json_number(v):
    """NaN/inf are not JSON: written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _config_json(config: FitConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def write_preset_files(folder: Path = REPO_CONFIGS) -> list[Path]:
    """(Re)write configs/fit_<preset>.json from PRESETS (the files users copy and edit)."""
    written = []
    for name, params in PRESETS.items():
        path = Path(folder) / f"fit_{name}.json"
        fsutil.write_json(path, params.to_json())
        written.append(path)
    return written

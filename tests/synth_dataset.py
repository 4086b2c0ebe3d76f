"""Tiny synthetic datasets with known geometry, shared by the tests.

1. For the parse/background/contact-sheet tests (:func:`make_dataset`):

A cartoon head (skin ellipse, dark hair cap, open mouth) and shoulders over a smooth static
background; the head slides sideways over the clip. Landmarks are placed exactly: the face-oval
indices on the face ellipse, the inner-lip indices on the mouth ellipse, every other landmark at
the face centre. Pose: a pinhole camera and a head at 40 cm, turned by the same slide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from avatar3d.core import video
from avatar3d.core.camera import Camera
from avatar3d.core.dataset import FORMAT_VERSION, DatasetPaths, Label, Manifest, default_split
from avatar3d.core.vocab import BLENDSHAPE_NAMES, FACE_OVAL, INNER_LIPS, MOUTH_LANDMARKS, blendshape_index
from avatar3d.fsutil import write_json
from avatar3d.gaussian.config import FitParams
from avatar3d.gaussian.deform import DeformConfig
from avatar3d.gaussian.gaussians import StrategyConfig
from avatar3d.gaussian.rasterize import rasterize

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


# ---------------------------------------------------------------------------------------------
# 2. For fit, render and eval (:func:`make_fit_dataset`): a head rendered from known Gaussians
# whose jaw opens and closes, with tracks, masks, plate and mel features.

FIT_SIZE = 64
FIT_FRAMES = 30


def _ellipsoid_surface(n: int, radii, g: torch.Generator, front_only: bool) -> torch.Tensor:
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    if front_only:
        d[:, 2] = -d[:, 2].abs()  # the camera looks along +z from z < 0
    return d * torch.tensor(radii)


def make_fit_dataset(root: Path, frames: int = FIT_FRAMES, size: int = FIT_SIZE) -> Path:
    """A dataset in the preprocess layout, rendered from an ellipsoidal head of Gaussians whose
    jaw opens with the ``jawOpen`` blendshape, under known head poses."""
    import cv2

    from avatar3d.fsutil import write_json
    from avatar3d.core.masks import write_masks
    from avatar3d.core.video import write_video

    g = torch.Generator().manual_seed(0)
    paths = DatasetPaths(root)
    root.mkdir(parents=True)
    # head: skin surface, hair cap on top, red lips and a dark mouth interior
    skin = _ellipsoid_surface(700, (7.0, 9.0, 8.0), g, front_only=False)
    skin_col = torch.stack([0.85 + 0.1 * torch.sin(skin[:, 0]), 0.65 + 0.1 * torch.cos(skin[:, 1]),
                            0.5 + 0.05 * torch.sin(skin[:, 2])], 1)
    hair = skin[:, 1] < -5.0
    skin_col[hair] = torch.tensor([0.2, 0.15, 0.1])
    eyes = ((skin[:, 0].abs() - 2.5).abs() < 1.0) & ((skin[:, 1] + 2.0).abs() < 0.8) & (skin[:, 2] < 0)
    skin_col[eyes] = torch.tensor([0.1, 0.1, 0.3])
    mouth_c = torch.tensor([0.0, 4.0, -7.0])
    lips_u = mouth_c + torch.stack([torch.linspace(-2.5, 2.5, 30), torch.full((30,), -0.4), torch.zeros(30)], 1)
    lips_l = mouth_c + torch.stack([torch.linspace(-2.5, 2.5, 30), torch.full((30,), 0.4), torch.zeros(30)], 1)
    cavity = mouth_c + torch.tensor([0.0, 0.6, 1.0]) + torch.randn(80, 3, generator=g) * torch.tensor([1.2, 0.5, 0.3])
    lower_face = (skin[:, 1] > 4.4) & (skin[:, 2] < 0)  # chin moves with the jaw

    t_ = torch.arange(frames, dtype=torch.float32)
    jaw = (0.5 + 0.5 * torch.sin(t_ * 0.7)).clamp(0, 1) ** 2  # [F]
    yaw, pitch = 0.15 * torch.sin(t_ * 0.21), 0.1 * torch.cos(t_ * 0.17)
    K = torch.tensor([[130.0, 0, size / 2], [0, 130.0, size / 2 - 2], [0, 0, 1]])
    plate = torch.stack(torch.meshgrid(torch.linspace(0.2, 0.4, size), torch.linspace(0.3, 0.6, size), indexing="ij"), -1)
    plate = torch.cat([plate, torch.full((size, size, 1), 0.5)], -1)  # [S, S, 3]
    torso_rows = torch.arange(size)[:, None] > size * 0.85

    # landmarks: canonical points on the front of the head, lips at MOUTH_LANDMARKS
    canonical = _ellipsoid_surface(478, (6.5, 8.0, 7.5), g, front_only=True)
    outer, inner = list(MOUTH_LANDMARKS[:20]), list(MOUTH_LANDMARKS[20:])
    ang = torch.linspace(0, 2 * math.pi, 21)[:-1]
    canonical[outer] = mouth_c + torch.stack([2.6 * torch.cos(ang), 0.9 * torch.sin(ang), torch.zeros(20)], 1)
    canonical[inner] = mouth_c + torch.stack([2.0 * torch.cos(ang), 0.3 * torch.sin(ang), torch.zeros(20)], 1)

    images, labels, Rs, ts, lms = [], [], [], [], []
    for f in range(frames):
        cy, sy, cp, sp = math.cos(yaw[f]), math.sin(yaw[f]), math.cos(pitch[f]), math.sin(pitch[f])
        R = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        tv = torch.tensor([0.3 * math.sin(f * 0.3), 0.2 * math.cos(f * 0.25), 50.0])
        open_ = 2.5 * float(jaw[f])
        sk = skin.clone()
        sk[lower_face, 1] += open_
        means = torch.cat([sk, lips_u, lips_l + torch.tensor([0, open_, 0]), cavity])
        cols = torch.cat([skin_col, torch.tensor([0.7, 0.2, 0.2]).expand(60, 3), torch.tensor([0.25, 0.05, 0.05]).expand(80, 3)])
        cls = torch.cat([torch.where(hair[:, None], torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0])),
                         torch.tensor([1.0, 0, 0]).expand(60, 3), torch.tensor([0.0, 1, 0]).expand(80, 3)])
        n = means.shape[0]
        quats = torch.tensor([1.0, 0, 0, 0]).expand(n, 4)
        scales = torch.full((n, 3), 0.6)
        opac = torch.full((n,), 0.95)
        cam = Camera.from_pose(K, R, tv, size, size)
        both, alpha = rasterize(means, quats, scales, opac, torch.cat([cols, cls], 1), cam.K, cam.viewmat, size,
                                size, backend="dense")
        rgb, cls_img = both[..., :3], both[..., 3:]
        back = torch.where(torso_rows[..., None], torch.tensor([0.1, 0.3, 0.2]), plate)
        images.append(((rgb + (1 - alpha) * back) * 255).round().clamp(0, 255).to(torch.uint8).numpy())
        lab = np.full((size, size), Label.BACKGROUND, np.uint8)
        lab[torso_rows.expand(size, size).numpy()] = Label.TORSO
        head = alpha[..., 0].numpy() > 0.5
        kind = cls_img.argmax(-1).numpy()
        lab[head & (kind == 0)] = Label.FACE
        lab[head & (kind == 1)] = Label.MOUTH
        lab[head & (kind == 2)] = Label.HAIR
        labels.append(lab)
        lm = canonical.clone()
        lm[[i for i in inner + outer if canonical[i, 1] > mouth_c[1]], 1] += open_
        pc = lm @ R.T + tv
        uv = pc @ K.T
        depth_px = (pc[:, 2:] - pc[:, 2].mean()) * K[0, 0] / pc[:, 2].mean()  # relative z on the x scale (mediapipe)
        lms.append(torch.cat([uv[:, :2] / uv[:, 2:], depth_px], 1).numpy())
        Rs.append(R.numpy())
        ts.append(tv.numpy())

    write_video(paths.frames, images, crf=12)
    write_masks(paths.masks, labels)
    cv2.imwrite(str(paths.background), (plate.numpy()[..., ::-1] * 255).round().astype(np.uint8))
    bs = np.zeros((frames, len(BLENDSHAPE_NAMES)), np.float32)
    bs[:, blendshape_index("jawOpen")] = jaw.numpy()
    np.savez_compressed(
        paths.tracks, landmarks=np.stack(lms).astype(np.float32), blendshapes=bs, valid=np.ones(frames, bool),
        interpolated=np.zeros(frames, bool), K=K.numpy(), R=np.stack(Rs), t=np.stack(ts),
        canonical=canonical.numpy(),
    )
    paths.features_dir.mkdir()
    mel = np.random.default_rng(0).normal(size=(frames, 4, 80)).astype(np.float32) * 0.1
    mel[:, :, :10] += jaw.numpy()[:, None, None]  # audio that carries the jaw
    np.save(paths.features("mel"), mel)
    manifest = Manifest(
        format_version=FORMAT_VERSION, source_name="synthetic", source_sha256="0" * 64, source_fps=25.0,
        source_duration=frames / 25, fps=25, size=size, num_frames=frames, crop=(0, 0, size),
        split=default_split(frames, 0.2),
    )
    write_json(paths.manifest, manifest.to_json())
    return root


def tiny_fit_params(**kw) -> FitParams:
    """FitParams small enough for a fit of the fit dataset in seconds (48 px window)."""
    base = FitParams(
        steps=200, window="head", image_size=48, num_face=600, num_mouth=60, lr_means=5e-4,
        deform=DeformConfig(num_levels=4, log2_table_size=10, max_resolution=64, hidden=24, cond_dim=8),
        strategy=StrategyConfig(refine_start=60, refine_stop=150, refine_every=30, reset_every=0,
                                grad_threshold=0.0003, split_scale=0.02, max_gaussians=1200),
        checkpoint_every=50, log_every=10,
    )
    return replace(base, **kw)


def speechy_audio(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """Noise bursts at syllable rate (speech-band energy that comes and goes). [S] float32"""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    return (0.3 * env * rng.standard_normal(len(t))).astype(np.float32)


def make_tiny_run(root: Path, frames: int = 16) -> Path:
    """A RUN (root/run) from a very short fit (20 steps, 48 px window, 10 prior fine-tuning steps)
    on the fit dataset of ``frames`` frames (80 % train) whose audio is :func:`speechy_audio`."""
    import json

    import soundfile as sf

    from avatar3d.fit import FitConfig, run_fit

    data = make_fit_dataset(root / "data", frames=frames)
    paths = DatasetPaths(data)
    n = json.loads(paths.manifest.read_text())["num_frames"]
    sf.write(str(paths.audio), speechy_audio(n / 25)[: n * 640], 16_000, subtype="PCM_16")
    params = tiny_fit_params(steps=20, checkpoint_every=1000, prior_finetune_steps=10)
    preset = root / "preset.json"
    preset.write_text(json.dumps(params.to_json()))
    run_fit(FitConfig(data, root / "run", preset=str(preset), device="cpu", progress=False, threads=1))
    return root / "run"


def make_subject_run(root: Path, steps: int = 200) -> Path:
    """A RUN (root/run) of the synthetic talking head (avatar3d.synth: a photo face the tracker
    finds), 4 s at 256², preprocessed for real and fitted for ``steps`` at 64² (about 40 s on
    2 cores): an avatar whose frames the face tracker reads, for the viewer's browser test."""
    import json

    from avatar3d.fit import FitConfig, run_fit
    from avatar3d.gaussian.config import PRESETS
    from avatar3d.preprocess.pipeline import PreprocessConfig, run_preprocess
    from avatar3d.synth.subject import SynthPaths, write_synth

    write_synth(root / "subject", seed=0, seconds=4.0, size=256)
    run_preprocess(PreprocessConfig(video=SynthPaths(root / "subject").clip, output=root / "data", size=256))
    demo = PRESETS["demo"]
    params = replace(
        demo, steps=steps, image_size=64, prior_finetune_steps=20, checkpoint_every=10 * steps,
        strategy=replace(demo.strategy, refine_start=steps // 4, refine_stop=3 * steps // 4, refine_every=steps // 8),
    )
    (root / "preset.json").write_text(json.dumps(params.to_json()))
    run_fit(FitConfig(root / "data", root / "run", preset=str(root / "preset.json"), device="cpu", progress=False,
                      threads=1))
    return root / "run"

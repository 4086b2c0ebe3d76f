"""Image and landmark metrics: the one implementation used by fit (loss and val), and by eval.

Images are ``[H, W, 3]`` float tensors in [0, 1]; masks ``[H, W]`` floats in [0, 1] (soft masks
weight pixels). SSIM is Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, evaluated where the window fits inside the image ("valid"); its mean equals
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``.

LMD (landmark distance) is the mean Euclidean distance in pixels between mouth landmarks found by
mediapipe's FaceLandmarker on rendered frames and reference landmarks.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # window 11
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` [H, W, C] (or [H, W]) weighted by ``mask`` [H, W]."""
    if mask is None:
        return x.mean()
    m = mask if x.dim() == 2 else mask[..., None].expand_as(x)
    return (x * m).sum() / m.sum().clamp(min=1e-8)


def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _masked_mean((pred - target) ** 2, mask)


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (over the mask's pixels if given)."""
    return -10.0 * torch.log10(mse(pred, target, mask).clamp(min=1e-12))


def _gaussian_window(device, dtype) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, device=device, dtype=dtype)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()  # [11]


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (mean over channels) where the window fits. [H, W, C] x2 -> [H - 10, W - 10]"""
    C = pred.shape[-1]
    g = _gaussian_window(pred.device, pred.dtype)
    x = torch.stack([pred, target, pred * pred, target * target, pred * target])  # [5, H, W, C]
    x = x.permute(0, 3, 1, 2).reshape(1, 5 * C, *pred.shape[:2])  # [1, 5C, H, W]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(5 * C, 1, 1, -1), groups=5 * C)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(5 * C, 1, -1, 1), groups=5 * C)
    mu_x, mu_y, xx, yy, xy = x.reshape(5, C, *x.shape[-2:])
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    s = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return s.mean(0)


def crop_to_ssim(mask: torch.Tensor) -> torch.Tensor:
    """A [H, W] mask cropped to the pixels where ssim_map is defined."""
    r = SSIM_RADIUS
    return mask[r:-r, r:-r]


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM (over the mask's pixels if given)."""
    s = ssim_map(pred, target)
    return _masked_mean(s, None if mask is None else crop_to_ssim(mask))


def lmd(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean Euclidean distance between landmark sets ``[F, L, 2]`` (frames where pred is NaN skipped)."""
    d = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(ref, np.float64), axis=-1)  # [F, L]
    ok = np.isfinite(d).all(axis=1)
    return float(d[ok].mean()) if ok.any() else math.nan


TRACKER_FACE_PX = 384  # rendered windows are enlarged towards this size before the tracker reads them


def tracker_upscale(size: int) -> int:
    """Integer factor that brings a ``size``-pixel window near ``TRACKER_FACE_PX`` (the tracker
    wants faces of ~100+ px)."""
    return max(1, math.ceil(TRACKER_FACE_PX / size))


def detect_landmarks(frames: list[np.ndarray], upscale: int = 1) -> np.ndarray:
    """mediapipe FaceLandmarker (IMAGE mode) on each ``[H, W, 3] uint8`` frame: ``[F, 478, 2]``
    pixel positions in the given frames (NaN where no face is found). ``upscale`` enlarges small
    frames before detection (the detector wants faces of ~100+ px)."""
    from avatar3d.models import face_landmarker_path
    from avatar3d.preprocess.track import FaceTracker

    out = np.full((len(frames), 478, 2), np.nan, np.float32)
    with FaceTracker(face_landmarker_path(), video=False) as tracker:
        for i, frame in enumerate(frames):
            img = frame
            if upscale > 1:
                t = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
                t = F.interpolate(t, scale_factor=upscale, mode="bicubic", align_corners=False)
                img = t[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
            obs = tracker.detect(img)
            if obs is not None:
                out[i] = obs.landmarks[:, :2] / upscale
    return out

"""Held-out frames of the clip, drawn and measured: PSNR, SSIM (whole window and head region) and
LMD on the val split, at the fit resolution. One implementation for fit's metrics.json and eval.

Any field: the avatar is drawn through :class:`avatar3d.core.avatar.Avatar` with the frame's
tracked head pose and motion code and composited over the frame's own background.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from avatar3d.core.avatar import Avatar, composite
from avatar3d.core.scene import Scene, WindowFrame
from avatar3d.core.vocab import MOUTH_LANDMARKS
from avatar3d.drive.metrics import detect_landmarks, lmd, psnr, ssim, tracker_upscale


def tracker_unavailable_reason() -> str | None:
    """None when the face tracker (mediapipe and its model file) can run, else why not."""
    from avatar3d.errors import UserError

    try:
        import mediapipe  # noqa: F401

        from avatar3d.models import face_landmarker_path

        face_landmarker_path()
    except (ImportError, UserError) as exc:
        return f"the face tracker is unavailable: {str(exc).splitlines()[0][:160]}"
    return None


def to_u8(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 array."""
    return (image * 255).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def render_window_frame(avatar: Avatar, scene: Scene, i: int, background: torch.Tensor, device) -> torch.Tensor:
    """Frame i drawn with its tracked pose and motion over ``background`` [S, S, 3] uint8:
    [S, S, 3] float in [0, 1] on ``device``."""
    cond = scene.conditioning(i, avatar.audio_window, device)
    rgba = avatar.render(cond, scene.camera(i, device))
    return composite(rgba, background.to(device).float() / 255).clamp(0, 1)


def val_metrics(
    avatar: Avatar, scene: Scene, frame: Callable[[int], WindowFrame], device, landmarks: bool = True,
    indices: Sequence[int] | None = None,
) -> tuple[dict, list[torch.Tensor]]:
    """The val split's metrics (see module docstring) and the predictions ([S, S, 3] on the CPU,
    in ``scene.val`` order). ``frame(i)`` gives frame i in the window; ``indices``, some of the
    val frames instead of all."""
    val = np.asarray(scene.val if indices is None else indices)
    preds, rows = [], []
    for i in val:
        f = frame(int(i))
        pred = render_window_frame(avatar, scene, int(i), f.background, device).cpu()
        image, head = f.image.float() / 255, f.head.float() / 255
        rows.append((float(psnr(pred, image)), float(ssim(pred, image)),
                     float(psnr(pred, image, head)), float(ssim(pred, image, head))))
        preds.append(pred)
    r = np.array(rows)
    w = scene.window
    metrics = {
        "frames": len(val),
        "resolution": [w.size, w.size],
        "window": {"x0": w.x0, "y0": w.y0, "side": w.side, "frame_size": scene.frame_size},
        "psnr": float(r[:, 0].mean()),
        "ssim": float(r[:, 1].mean()),
        "psnr_head": float(r[:, 2].mean()),
        "ssim_head": float(r[:, 3].mean()),
    }
    if landmarks:
        reason = tracker_unavailable_reason()
        if reason is not None:  # e.g. a GPU box without mediapipe: the image metrics still stand
            metrics["lmd_px"] = None
            metrics["lmd_unavailable"] = reason
            return metrics, preds
        up = tracker_upscale(w.size)
        mouth = list(MOUTH_LANDMARKS)
        lm_pred = detect_landmarks([to_u8(p) for p in preds], upscale=up)[:, mouth]
        lm_true = detect_landmarks([frame(int(i)).image.numpy() for i in val], upscale=up)[:, mouth]
        lm_track = scene.landmarks[val][:, mouth]
        s = w.scale  # window px per dataset px
        metrics["lmd_px"] = lmd(lm_pred, lm_track) / s
        metrics["lmd_truth_px"] = lmd(lm_true, lm_track) / s
        metrics["lmd_frames_detected"] = int(np.isfinite(lm_pred).all(axis=(1, 2)).sum())
        metrics["lmd_units"] = "dataset pixels (frames of frame_size), mouth landmarks vs tracked"
    return metrics, preds

"""Background stage: a plate of the static scene without the person.

Each pixel of the plate is the temporal median of that pixel over the frames in which it is
background (the person's mask grown by a safety margin, so hair halos and motion blur stay out).
The median runs over up to ``max_samples`` frames spread evenly over the clip; pixels seen as
background only in other frames take the mean over every frame in which they were seen. Pixels
never seen (behind the torso for the whole clip, say) are filled by push-pull diffusion from the
seen border: a smooth continuation of the surrounding scene, never a ghost of the person.

The median and the fill are also used by the parse stage for its rough background estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar3d.core import video
from avatar3d.core.dataset import DatasetPaths, Label, Manifest
from avatar3d.errors import UserError
from avatar3d.fsutil import atomic_path
from avatar3d.core.masks import iter_masks
from avatar3d.preprocess.prefetch import prefetch

VERSION = 1


@dataclass(frozen=True)
class BackgroundConfig:
    """Options of the background stage (the plate of the scene without the person)."""

    max_samples: int = 96
    """Frames (spread evenly over the clip) whose background pixels enter the per-pixel median."""

    margin_px: int = 6
    """The person's mask is grown by this many pixels before a pixel counts as background."""

    prefetch: int = 4
    """Frames decoded ahead by a helper thread (0: no thread)."""

    fill_smooth_px: int = 9
    """Gaussian blur radius (pixels) applied to the filled, never-seen region to hide its seams."""

    def __post_init__(self) -> None:
        if self.max_samples < 1 or self.margin_px < 0 or self.fill_smooth_px < 0 or self.prefetch < 0:
            raise UserError(
                "background.max-samples must be >= 1, background.margin-px, "
                "background.fill-smooth-px and background.prefetch >= 0"
            )


def sample_indices(num_frames: int, max_samples: int) -> np.ndarray:
    """Up to ``max_samples`` frame indices spread evenly over ``[0, num_frames)``: ``[S] int``."""
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    count = min(num_frames, max(1, max_samples))
    return np.unique(np.round(np.linspace(0, num_frames - 1, count)).astype(np.int64))


def masked_median(samples: np.ndarray, ok: np.ndarray, rows_per_chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median over the samples where ``ok`` is set.

    samples: [S, H, W, C] uint8; ok: [S, H, W] bool.
    Returns the median ``[H, W, C] uint8`` (lower median; 0 where never ok) and the count of ok
    samples per pixel ``[H, W] int``.
    """
    s, h, w, c = samples.shape
    count = ok.sum(axis=0)  # [H, W]
    out = np.zeros((h, w, c), dtype=np.uint8)
    for y0 in range(0, h, rows_per_chunk):
        y1 = min(h, y0 + rows_per_chunk)
        block = samples[:, y0:y1].astype(np.uint16)  # [S, h, W, C]
        block[~ok[:, y0:y1]] = 256  # sorts after every real value
        block.sort(axis=0)
        k = np.maximum(count[y0:y1] - 1, 0) // 2  # [h, W]
        idx = np.broadcast_to(k[None, :, :, None], (1, y1 - y0, w, c))
        med = np.take_along_axis(block, idx, axis=0)[0]
        out[y0:y1] = np.where(med > 255, 0, med).astype(np.uint8)
    return out, count


def fill_unseen(image: np.ndarray, seen: np.ndarray, smooth_px: int = 9) -> np.ndarray:
    """Fill pixels where ``seen`` is False by push-pull diffusion from the seen ones.

    image: [H, W, C] uint8; seen: [H, W] bool. Returns ``[H, W, C] uint8``; seen pixels keep their
    values. An image with no seen pixel comes back mid-grey.
    """
    import cv2

    if seen.all():
        return image.copy()
    if not seen.any():
        return np.full_like(image, 128)
    weight = seen.astype(np.float32)
    value = image.astype(np.float32) * weight[..., None]
    levels: list[tuple[np.ndarray, np.ndarray]] = []
    while True:
        levels.append((value, weight))
        h, w = weight.shape
        if (weight > 0).all() or min(h, w) <= 1:
            break
        size = (max(1, (w + 1) // 2), max(1, (h + 1) // 2))
        # Sums over 2x2 blocks (INTER_AREA averages): a coarse pixel with any seen child is seen.
        value = 4.0 * cv2.resize(value, size, interpolation=cv2.INTER_AREA)
        weight = 4.0 * cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
        if value.ndim == 2:
            value = value[..., None]
    value, weight = levels[-1]
    filled = value / np.maximum(weight, 1e-8)[..., None]
    filled[weight <= 0] = value.reshape(-1, value.shape[-1]).sum(0) / max(float(weight.sum()), 1e-8)
    for value, weight in reversed(levels[:-1]):
        h, w = weight.shape
        up = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
        if up.ndim == 2:
            up = up[..., None]
        own = value / np.maximum(weight, 1e-8)[..., None]
        alpha = np.clip(weight, 0.0, 1.0)[..., None]
        filled = alpha * own + (1.0 - alpha) * up
    out = np.clip(filled, 0, 255)
    hole = ~seen
    if smooth_px > 0:
        k = 2 * int(smooth_px) + 1
        blurred = cv2.GaussianBlur(out, (k, k), 0)
        if blurred.ndim == 2:
            blurred = blurred[..., None]
        out[hole] = blurred[hole]
    out[seen] = image[seen]
    return np.round(out).astype(np.uint8)


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a boolean mask ``[H, W]`` by ``radius`` pixels (elliptic structuring element)."""
    import cv2

    if radius <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def run_background(paths: DatasetPaths, manifest: Manifest, config: BackgroundConfig) -> dict:
    """Write paths.background (``[size, size, 3]`` RGB PNG) from frames.mp4 and masks.mkv."""
    import cv2
    from tqdm import tqdm

    n = manifest.num_frames
    size = manifest.size
    picks = set(sample_indices(n, config.max_samples).tolist())
    samples = np.zeros((len(picks), size, size, 3), dtype=np.uint8)
    sample_ok = np.zeros((len(picks), size, size), dtype=bool)
    total = np.zeros((size, size, 3), dtype=np.float64)  # sum of background observations
    seen_count = np.zeros((size, size), dtype=np.int32)
    j = 0
    i = -1
    masks = iter_masks(paths.masks)

    def pairs():  # runs on the prefetch thread: decoding overlaps the accumulation below
        for frame in video.iter_frames(paths.frames):
            yield frame, next(masks, None)

    frames = tqdm(prefetch(pairs(), config.prefetch), total=n, desc="background", unit="frame")
    for i, (frame, labels) in enumerate(frames):
        if labels is None:
            raise UserError(f"{paths.masks} has fewer frames than {paths.frames}: rerun preprocess with --force")
        if frame.shape[:2] != labels.shape or frame.shape[:2] != (size, size):
            raise UserError(f"frame/mask size mismatch in {paths.root}: rerun preprocess with --force")
        ok = ~grow(labels != Label.BACKGROUND, config.margin_px)  # [H, W]
        cv2.accumulate(frame, total, mask=ok.view(np.uint8))
        seen_count += ok
        if i in picks:
            samples[j] = frame
            sample_ok[j] = ok
            j += 1
    if next(masks, None) is not None or i + 1 != n:
        raise UserError(
            f"frames.mp4 ({i + 1}), masks.mkv and the manifest ({n}) disagree on the frame count "
            f"in {paths.root}: rerun preprocess with --force"
        )
    plate, count = masked_median(samples[:j], sample_ok[:j])
    mean = (total / np.maximum(seen_count, 1)[..., None]).round().clip(0, 255).astype(np.uint8)
    only_mean = (count == 0) & (seen_count > 0)
    plate[only_mean] = mean[only_mean]
    seen = seen_count > 0
    plate = fill_unseen(plate, seen, config.fill_smooth_px)
    with atomic_path(paths.background) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(plate[..., ::-1])):
            raise OSError(f"could not write {paths.background}")
    return {
        "version": VERSION,
        "samples": int(j),
        "unseen_fraction": float(1.0 - seen.mean()),
        "mean_only_fraction": float(only_mean.mean()),
    }

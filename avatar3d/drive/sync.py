"""Audio-to-mouth synchrony: the ruler shared by eval, the prior's benchmarks and the demo.

Everything works on per-frame signals at the dataset frame rate (25 fps):

- :func:`mouth_opening` from face landmarks (the tracker's, run on real or rendered frames),
- :func:`speech_envelope` from audio,
- :func:`lagged_correlation` between the two (Pearson r at each lag, the best lag),
- :func:`flicker` of a region of a video (mean absolute frame difference inside a mask).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar3d.core.vocab import LEFT_EYE_OUTER, LOWER_INNER_LIP_MID, RIGHT_EYE_OUTER, UPPER_INNER_LIP_MID


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap divided by the outer-eye-corner distance (scale and resolution free).

    landmarks: [N, 478, 2 or 3] (pixels). Returns [N] float64; NaN where a frame's landmarks are NaN.
    """
    lm = np.asarray(landmarks, np.float64)[..., :2]
    gap = np.linalg.norm(lm[:, UPPER_INNER_LIP_MID] - lm[:, LOWER_INNER_LIP_MID], axis=-1)
    eyes = np.linalg.norm(lm[:, LEFT_EYE_OUTER] - lm[:, RIGHT_EYE_OUTER], axis=-1)
    return gap / np.maximum(eyes, 1e-9)


def speech_envelope(
    audio: np.ndarray, rate: int = 16_000, fps: int = 25, band: tuple[float, float] = (300.0, 4000.0)
) -> np.ndarray:
    """Log energy of the speech band per video frame.

    audio: [S] float mono. Returns [ceil(S / (rate / fps))] float64 in dB, one value per frame
    (window = one frame, Hann-weighted over two frames centred on it).
    """
    audio = np.asarray(audio, np.float64)
    hop = rate // fps
    n_frames = int(np.ceil(len(audio) / hop))
    win = 2 * hop
    padded = np.pad(audio, (win // 2 - hop // 2, win + n_frames * hop - len(audio)))
    idx = np.arange(n_frames)[:, None] * hop + np.arange(win)[None, :]
    segments = padded[idx] * np.hanning(win)[None, :]  # [N, win]
    spec = np.abs(np.fft.rfft(segments, axis=1)) ** 2
    freqs = np.fft.rfftfreq(win, 1.0 / rate)
    sel = (freqs >= band[0]) & (freqs <= band[1])
    energy = spec[:, sel].sum(axis=1) / win
    return 10.0 * np.log10(energy + 1e-10)


@dataclass(frozen=True)
class LagCorrelation:
    """Pearson r of two signals at the best lag (frames; positive = the first lags the second)."""

    best_r: float
    best_lag: int
    r_at_zero: float


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two [N] series over the frames where both are finite (nan when fewer than 3
    such frames or either is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def lagged_correlation(signal: np.ndarray, reference: np.ndarray, max_lag: int = 5) -> LagCorrelation:
    """Correlate ``signal[i + lag]`` with ``reference[i]`` for lag in [-max_lag, max_lag].

    Both [N] (trimmed to the shorter). A positive best lag means ``signal`` follows ``reference``
    late by that many frames.
    """
    n = min(len(signal), len(reference))
    s = np.asarray(signal[:n], np.float64)
    r = np.asarray(reference[:n], np.float64)
    results = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            results[lag] = pearson(s[lag:], r[: n - lag])
        else:
            results[lag] = pearson(s[: n + lag], r[-lag:])
    finite = {k: v for k, v in results.items() if np.isfinite(v)}
    if not finite:
        return LagCorrelation(float("nan"), 0, float("nan"))
    best = max(finite, key=lambda k: finite[k])
    return LagCorrelation(best_r=finite[best], best_lag=int(best), r_at_zero=results[0])


def flicker(frames: np.ndarray, masks: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames inside a region, in 8-bit levels.

    frames: [N, H, W, 3] uint8; masks: [N, H, W] bool (the region, e.g. torso+neck). A pixel counts
    for a frame pair when it is inside the region in both frames.
    """
    frames = np.asarray(frames)
    masks = np.asarray(masks, bool)
    total = 0.0
    count = 0
    for i in range(1, len(frames)):
        region = masks[i] & masks[i - 1]
        if not region.any():
            continue
        diff = np.abs(frames[i].astype(np.int16) - frames[i - 1].astype(np.int16))
        total += float(diff[region].sum())
        count += int(region.sum()) * frames.shape[-1]
    return total / count if count else float("nan")

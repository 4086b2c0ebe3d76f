"""How a mouth articulates speech, measured from the mouth opening the tracker reads off frames.

Phone-aware (English; :mod:`avatar3d.audio.phones`), per clip:

- ``bilabial_closure_rate``: the share of /p b m/ segments in which the mouth reaches the
  speaker's closed level (``closed``: e.g. the training frames' 10th-percentile opening) on some
  frame within the segment +- 1 frame;
- ``open_vowel_opening``: the median, over open vowels (/aa ae ah ao aw ay eh/), of the segment's
  widest opening, relative to the speaker's range (0 = their p5, 1 = their p95);
- ``bilabial_lag_ms`` / ``open_vowel_lag_ms``: median time from a segment's centre to the mouth's
  extreme (narrowest for bilabials, widest for vowels) within +- 3 frames (positive: the mouth is late).

Every language: ``opening_spread`` (p95 - p5 of the opening over frames with sound) — how far the
mouth travels while speaking.
"""
from __future__ import annotations

import numpy as np

from avatar3d.audio.phones import BILABIALS, OPEN_VOWELS, Phone
from avatar3d.core.dataset import FPS

SEARCH = 3  # frames either side of a segment's centre searched for its extreme


def _frames(p: Phone, n: int, pad: int = 0) -> np.ndarray:
    a = max(0, int(np.floor(p.start * FPS)) - pad)
    b = min(n, int(np.ceil(p.end * FPS)) + pad)
    return np.arange(a, b)


def opening_spread(opening: np.ndarray, sounding: np.ndarray | None = None) -> float | None:
    """p95 - p5 of ``opening`` [N] over the frames with sound (``sounding`` [N] bool; all when None)."""
    x = np.asarray(opening, np.float64)
    keep = np.isfinite(x) & (np.ones(len(x), bool) if sounding is None else np.asarray(sounding, bool))
    if keep.sum() < 10:
        return None
    return float(np.percentile(x[keep], 95) - np.percentile(x[keep], 5))


def _extreme_lag_ms(opening: np.ndarray, p: Phone, narrowest: bool) -> float | None:
    n = len(opening)
    c = int(round(p.centre * FPS - 0.5))  # the frame holding the centre
    idx = np.arange(max(0, c - SEARCH), min(n, c + SEARCH + 1))
    vals = opening[idx]
    if not np.isfinite(vals).any():
        return None
    k = idx[np.nanargmin(vals) if narrowest else np.nanargmax(vals)]
    return float(((k + 0.5) / FPS - p.centre) * 1000)


def phone_measures(opening: np.ndarray, phones: list[Phone], closed: float, lo: float, hi: float) -> dict:
    """The phone-aware measures (module docstring) of ``opening`` [N] (per 25 fps frame, NaN = no
    face) against ``phones``; ``closed``: the speaker's closed level; ``lo``, ``hi``: their p5/p95."""
    x = np.asarray(opening, np.float64)
    n = len(x)
    closures, vowel_open, bil_lag, vow_lag = [], [], [], []
    for p in phones:
        if p.name in BILABIALS:
            seg = x[_frames(p, n, pad=1)]
            if np.isfinite(seg).any():
                closures.append(float(np.nanmin(seg) <= closed))
                lag = _extreme_lag_ms(x, p, narrowest=True)
                if lag is not None:
                    bil_lag.append(lag)
        elif p.name in OPEN_VOWELS:
            seg = x[_frames(p, n)]
            if len(seg) and np.isfinite(seg).any():
                vowel_open.append((float(np.nanmax(seg)) - lo) / max(hi - lo, 1e-6))
                lag = _extreme_lag_ms(x, p, narrowest=False)
                if lag is not None:
                    vow_lag.append(lag)
    med = lambda v: float(np.median(v)) if v else None  # noqa: E731
    return {
        "bilabials": len(closures), "bilabial_closure_rate": float(np.mean(closures)) if closures else None,
        "open_vowels": len(vowel_open), "open_vowel_opening": med(vowel_open),
        "bilabial_lag_ms": med(bil_lag), "open_vowel_lag_ms": med(vow_lag),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0."""
    return None if a is None or b is None or b == 0 else float(a / b)

"""Speech-like audio that the project synthesises itself, and the jaw motion that goes with it.

A source-filter model: a glottal pulse train (with a falling intonation per phrase) through three
formant resonators per syllable, vowels chosen from a small table, fricative/plosive noise onsets,
syllables at about 4 Hz grouped into phrases separated by pauses. The jaw opening follows each
syllable's amplitude envelope scaled by how open its vowel is, so mouth and sound move together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

# vowel: (F1, F2, F3 in Hz, openness in [0, 1])
VOWELS: dict[str, tuple[float, float, float, float]] = {
    "a": (800.0, 1250.0, 2600.0, 1.0),
    "ae": (700.0, 1700.0, 2550.0, 0.85),
    "o": (520.0, 900.0, 2450.0, 0.65),
    "e": (480.0, 1900.0, 2600.0, 0.55),
    "u": (330.0, 850.0, 2300.0, 0.3),
    "i": (300.0, 2300.0, 3000.0, 0.25),
}


@dataclass(frozen=True)
class Speech:
    """Synthesised speech and the mouth motion it implies (N frames, S = N * rate / fps samples)."""

    audio: np.ndarray  # [S] float32 mono in [-1, 1]
    rate: int
    jaw: np.ndarray  # [N] float32 in [0, 1]: jaw opening at each frame's centre
    envelope: np.ndarray  # [N] float32: the syllables' amplitude envelope at each frame's centre


def _resonator(f: float, bw: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / rate)
    a = np.array([1.0, -2.0 * r * np.cos(2 * np.pi * f / rate), r * r])
    return np.array([a.sum()]), a  # unit gain at DC


def synth_speech(rng: np.random.Generator, num_frames: int, fps: int = 25, rate: int = 16_000) -> Speech:
    """Speech for ``num_frames`` video frames, drawn from ``rng`` (deterministic for a seed)."""
    n = num_frames * rate // fps
    dur = n / rate
    t = np.arange(n) / rate
    f0 = np.full(n, 190.0)
    env = np.zeros(n)  # vowel amplitude envelope (what the jaw follows)
    jaw_src = np.zeros(n)
    out = np.zeros(n)
    noise_hp = signal.butter(4, 2500, "highpass", fs=rate, output="sos")
    names = list(VOWELS)

    # the glottal source is built after the F0 contour; first lay out the syllables
    syllables = []  # (start, stop, vowel, peak, onset_stop)
    pos = 0.3 + rng.uniform(0.0, 0.2)
    while pos < dur - 0.5:
        n_syl = int(rng.integers(3, 8))
        f_start, f_end = rng.uniform(200, 235), rng.uniform(155, 180)
        phrase_start = pos
        for _ in range(n_syl):
            d = rng.uniform(0.17, 0.3)
            if pos + d > dur - 0.2:
                break
            onset = rng.uniform(0.03, 0.07) if rng.random() < 0.6 else 0.0
            syllables.append((pos, pos + d, names[int(rng.integers(len(names)))], rng.uniform(0.55, 1.0), onset))
            pos += d
        phrase = (t >= phrase_start) & (t < pos)
        frac = (t[phrase] - phrase_start) / max(pos - phrase_start, 1e-6)
        f0[phrase] = f_start + (f_end - f_start) * frac + 6.0 * np.sin(2 * np.pi * 5.3 * t[phrase])
        pos += rng.uniform(0.25, 0.65)  # pause

    phase = np.cumsum(2 * np.pi * f0 / rate)
    g = (phase / (2 * np.pi)) % 1.0
    # Rosenberg glottal flow pulse (open 60%, closing 25%), differentiated for lip radiation
    flow = np.where(g < 0.6, 0.5 * (1 - np.cos(np.pi * g / 0.6)), np.where(g < 0.85, np.cos(np.pi * (g - 0.6) / 0.5), 0.0))
    source = np.diff(flow, prepend=flow[0]) * 20.0

    for start, stop, vowel, peak, onset in syllables:
        f1, f2, f3, openness = VOWELS[vowel]
        i0, i1 = int(start * rate), min(int(stop * rate), n)
        iv = min(i0 + int(onset * rate), i1 - 1)
        x = (np.arange(iv, i1) - iv) / max(i1 - iv, 1)
        shape = np.sin(np.pi * x) ** 0.7  # [L]
        amp = peak * (0.6 + 0.4 * openness)
        seg = source[iv:i1] * shape * amp
        for f, bw in ((f1 * rng.uniform(0.95, 1.05), 90.0), (f2 * rng.uniform(0.95, 1.05), 110.0), (f3, 160.0)):
            b, a = _resonator(f, bw, rate)
            seg = signal.lfilter(b, a, seg)
        out[iv:i1] += seg
        env[iv:i1] = np.maximum(env[iv:i1], shape * amp)
        jaw_src[iv:i1] = np.maximum(jaw_src[iv:i1], shape * peak * openness)
        if onset > 0:
            burst = signal.sosfilt(noise_hp, rng.standard_normal(iv - i0))
            burst *= np.hanning(iv - i0) * 0.15 * peak
            out[i0:iv] += burst

    out /= max(np.abs(out).max(), 1e-9)
    out = 0.7 * out + 0.002 * rng.standard_normal(n)  # a little room tone
    # the jaw: a second-order-ish smoothing of its target (muscles are not instantaneous)
    sos = signal.butter(2, 6.0, "lowpass", fs=rate, output="sos")
    jaw = np.clip(signal.sosfiltfilt(sos, jaw_src), 0.0, 1.0)
    centres = ((np.arange(num_frames) + 0.5) * rate / fps).astype(np.int64)
    return Speech(
        audio=np.clip(out, -1, 1).astype(np.float32),
        rate=rate,
        jaw=jaw[centres].astype(np.float32),
        envelope=env[centres].astype(np.float32),
    )

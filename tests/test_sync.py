"""The synchrony ruler: mouth opening, speech envelope, lagged correlation, flicker."""
from __future__ import annotations

import numpy as np

from avatar3d.core import vocab
from avatar3d.drive import sync


def test_mouth_opening_is_gap_over_eye_distance():
    lm = np.zeros((2, 478, 3))
    lm[:, vocab.RIGHT_EYE_OUTER, :2] = [100, 100]
    lm[:, vocab.LEFT_EYE_OUTER, :2] = [200, 100]
    lm[:, vocab.UPPER_INNER_LIP_MID, :2] = [150, 200]
    lm[0, vocab.LOWER_INNER_LIP_MID, :2] = [150, 200]
    lm[1, vocab.LOWER_INNER_LIP_MID, :2] = [150, 230]
    np.testing.assert_allclose(sync.mouth_opening(lm), [0.0, 0.3])
    # scale invariant
    np.testing.assert_allclose(sync.mouth_opening(lm * 2), [0.0, 0.3])


def test_speech_envelope_follows_bursts_and_has_one_value_per_frame():
    rate, fps = 16_000, 25
    t = np.arange(rate * 2) / rate
    gate = (np.floor(t * 4) % 2 == 0).astype(float)  # 125 ms on, 125 ms off
    audio = 0.3 * np.sin(2 * np.pi * 800 * t) * gate
    env = sync.speech_envelope(audio, rate, fps)
    assert env.shape == (50,)
    frame_gate = gate[:: rate // fps][:50]
    on, off = env[frame_gate > 0.5], env[frame_gate < 0.5]
    assert np.median(on) > np.median(off) + 30  # dB
    # out-of-band energy (50 Hz hum) does not count as speech
    hum = 0.3 * np.sin(2 * np.pi * 50 * t)
    assert np.median(sync.speech_envelope(hum, rate, fps)) < np.median(on) - 30


def test_lagged_correlation_finds_the_shift():
    rng = np.random.default_rng(0)
    ref = np.convolve(rng.normal(size=400), np.ones(5) / 5, mode="same")
    sig = np.roll(ref, 2) + 0.05 * rng.normal(size=400)  # signal 2 frames late
    res = sync.lagged_correlation(sig, ref, max_lag=5)
    assert res.best_lag == 2
    assert res.best_r > 0.95
    assert res.r_at_zero < res.best_r


def test_lagged_correlation_of_unrelated_noise_is_small():
    rng = np.random.default_rng(1)
    res = sync.lagged_correlation(rng.normal(size=2000), rng.normal(size=2000), max_lag=3)
    assert abs(res.best_r) < 0.1


def test_flicker_counts_only_the_region():
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1, :2] = 10  # top half changes between frames 0-1 and 1-2
    masks = np.zeros((3, 4, 4), bool)
    masks[:, 2:] = True  # region: bottom half, static
    assert sync.flicker(frames, masks) == 0.0
    masks[:] = True
    assert np.isclose(sync.flicker(frames, masks), 5.0)  # half the pixels differ by 10

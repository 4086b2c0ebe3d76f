"""The articulation ruler (issue 23): phone-aware measures of a mouth-opening curve, and the phone
aligner on real English speech (skipped without ../shared/data)."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.audio.phones import Phone, phone_segments, phones_unavailable_reason
from avatar3d.drive.articulation import opening_spread, phone_measures, ratio
from avatar3d.errors import UserError

CLOSED, LO, HI = 0.01, 0.0, 0.10


def _phones() -> list[Phone]:
    """Alternating bilabial (80 ms) and open vowel (120 ms) segments over 4 s."""
    out, t = [], 0.2
    while t < 3.6:
        out += [Phone("M", t, t + 0.08), Phone("AA", t + 0.08, t + 0.2)]
        t += 0.4
    return out


def _opening(phones: list[Phone], close_to: float, open_to: float, n: int = 100) -> np.ndarray:
    t = (np.arange(n) + 0.5) / 25
    x = np.full(n, 0.04)
    for p in phones:
        inside = (t >= p.start) & (t < p.end)
        x[inside] = close_to if p.name == "M" else open_to
    return x


def test_a_mouth_that_closes_on_every_bilabial_scores_one():
    phones = _phones()
    good = phone_measures(_opening(phones, 0.005, 0.09), phones, CLOSED, LO, HI)
    assert good["bilabials"] == 9 and good["bilabial_closure_rate"] == 1.0
    assert good["open_vowel_opening"] == pytest.approx(0.9)
    assert abs(good["bilabial_lag_ms"]) <= 40 and abs(good["open_vowel_lag_ms"]) <= 60
    mushy = phone_measures(_opening(phones, 0.03, 0.05), phones, CLOSED, LO, HI)
    assert mushy["bilabial_closure_rate"] == 0.0 and mushy["open_vowel_opening"] == pytest.approx(0.5)
    # a mouth one frame late still closes within the segment +- 1 frame
    late = phone_measures(np.roll(_opening(phones, 0.005, 0.09), 1), phones, CLOSED, LO, HI)
    assert late["bilabial_closure_rate"] == 1.0 and late["bilabial_lag_ms"] > 0
    faceless = phone_measures(np.full(100, np.nan), phones, CLOSED, LO, HI)
    assert faceless["bilabials"] == 0 and faceless["bilabial_closure_rate"] is None


def test_opening_spread_and_ratio():
    x = np.linspace(0, 0.1, 101)
    assert opening_spread(x) == pytest.approx(0.09)
    assert opening_spread(x, x > 0.05) == pytest.approx(0.045, abs=0.002)
    assert opening_spread(x[:5]) is None  # too few frames to tell
    assert ratio(1.0, 2.0) == 0.5 and ratio(None, 2.0) is None and ratio(1.0, 0.0) is None


def test_other_languages_are_skipped_with_a_reason():
    assert "English" in phones_unavailable_reason("fr")
    assert phones_unavailable_reason("en") is None
    with pytest.raises(UserError, match="English"):
        phone_segments(np.zeros(16000, np.float32), "de")


def test_aligner_finds_phones_in_english_speech(shared_data, tmp_path, monkeypatch):
    from avatar3d.audio.features import load_audio
    from avatar3d.audio.phones import BILABIALS, OPEN_VOWELS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    audio = load_audio(shared_data / "audio" / "hdtf_RD_Radio31_000_8s.wav")
    phones = phone_segments(audio)
    names = [p.name for p in phones]
    assert sum(n in BILABIALS for n in names) >= 3 and sum(n in OPEN_VOWELS for n in names) >= 10
    assert all(0 <= p.start < p.end <= len(audio) / 16000 + 0.05 for p in phones)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(phones, phones[1:]))  # in order, no overlap
    assert len(list((tmp_path / "avatar3d" / "phones").glob("*.json"))) == 1
    assert phone_segments(audio) == phones  # from the cache


def test_bilabial_weights_mark_the_aligned_p_b_m(shared_data, tmp_path, monkeypatch):
    """Fine-tuning's closure weights sit on the frames of the /p b m/ the aligner finds."""
    import soundfile as sf

    from avatar3d.audio.features import load_audio
    from avatar3d.audio.phones import BILABIALS
    from avatar3d.audio.prior import bilabial_weights

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    audio = load_audio(shared_data / "audio" / "hdtf_RD_Radio31_000_8s.wav")
    (tmp_path / "d").mkdir()
    sf.write(str(tmp_path / "d" / "audio.wav"), audio, 16000, subtype="PCM_16")
    n = len(audio) // 640
    w = bilabial_weights(tmp_path / "d", n, 3.0)
    assert set(np.unique(w)) == {1.0, 4.0}
    phones = phone_segments(load_audio(tmp_path / "d" / "audio.wav"))
    for p in phones:
        if p.name in BILABIALS:
            assert w[min(n - 1, int(p.centre * 25))] == 4.0

"""bench/prior.py's leave-one-speaker-out folds (the training itself is stubbed out)."""
import importlib.util
from pathlib import Path

import numpy as np

from avatar3d.audio import prior as P

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_prior", REPO / "bench" / "prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_only_clips_are_scored_but_never_trained_on(monkeypatch):
    bench = _bench_module()
    folds = []

    def fold(held, datasets, net, hp):
        folds.append((held.name, [d.name for d in datasets]))
        return {"clip": held.name}

    monkeypatch.setattr(bench, "_fold", fold)
    a, b, c, lieu = (Path(n) for n in ("a", "b", "c", "lieu"))
    rows = bench.loso([a, b, c], None, None, jobs=1, held_out_only=[lieu])
    assert [held for held, _ in folds] == ["a", "b", "c", "lieu"]
    assert all(given == ["a", "b", "c"] for _, given in folds)  # _fold leaves the held-out one out
    assert [r["held_out_only"] for r in rows] == [False, False, False, True]


def test_own_audio_ridge_finds_what_the_audio_says_and_not_past_the_look_ahead():
    """jawOpen driven by the audio 6 frames later: beyond the 2-frame look-ahead the raw tracks are
    unpredictable, shifted by the clip's 6-frame offset they are predictable."""
    bench = _bench_module()
    rng = np.random.default_rng(0)
    n, m = 1000, len(P.SPEECH_CHANNELS)
    latent = rng.normal(size=(n, 4, 8))  # mel bands move together, as in speech: 8 factors
    feats = (latent @ rng.normal(size=(8, 80))).astype(np.float32)
    drive = latent.mean(axis=1)[:, 0]  # [N]
    motion = np.zeros((n, m), np.float32)
    motion[:-6, P.JAW_OPEN] = drive[6:] + 0.1 * rng.normal(size=n - 6)
    clip = P.SpeakerClip("synthetic", feats, motion, np.ones(n, bool), np.zeros(m, np.float32),
                         np.ones(m, np.float32), offset=6)
    r = bench.own_audio_ridge(clip)
    assert abs(r["own_audio_ridge_jawOpen_r"]) < 0.2
    assert r["own_audio_ridge_jawOpen_r_offset"] > 0.9

"""bench/prior.py's leave-one-speaker-out folds (the training itself is stubbed out)."""
import importlib.util
from pathlib import Path

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

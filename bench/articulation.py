"""Benchmark summary: articulation of fitted avatars against the issue's targets, from eval JSONs.

``avatar3d eval RUN --audio WAV -o E.json`` measures one avatar with one driving wav (minutes to
over an hour on a CPU, so the evals run apart, in parallel); this gathers any number of them
into one table beside the real clip's ceiling, with what the run's prior did (its fine-tuned
voice matching and syllable contrast) and pass/fail per target:

- cross-driven: opening spread >= 0.8x the real clip's; bilabial closure rate >= 0.9x the real
  clip's; open-vowel opening within 20 % of the real clip's (English phones on both sides, else
  n/a); silence shut (settled silent frames' median opening at or under the training p10 at the
  fit resolution, on wavs with silence). Beside the bound, for reading it: what the field draws
  for the val frames whose real mouth is shut, given their tracked codes (its shut mouth at this
  resolution; the prior cannot shut the mouth further than the field draws it);
- self-driven val: audio-driven opening r >= 0.6 and spread >= 0.8x.

    python bench/articulation.py E1.json E2.json ... --out bench/results/articulation.json

Writes the JSON (provenance, one row per eval) and a Markdown table beside it (.md).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

from avatar3d.fsutil import atomic_path  # noqa: E402

SPREAD_MIN, CLOSURE_MIN, VOWEL_TOL, SELF_R_MIN, SELF_SPREAD_MIN = 0.8, 0.9, 0.2, 0.6, 0.8


@dataclasses.dataclass(frozen=True)
class SummaryConfig:
    """Gather eval JSONs into the articulation table."""

    evals: tyro.conf.Positional[tuple[Path, ...]]
    """JSONs written by `avatar3d eval RUN --audio WAV -o E.json`."""
    out: Path = Path("bench/results/articulation.json")
    """Where to write the summary (and the .md table beside it)."""


def _check(value, ok) -> bool | None:
    return None if value is None else bool(ok(value))


def summarise(path: Path) -> dict:
    """One eval JSON -> one row: the avatar, its prior, the wav, the measures and the targets met."""
    from avatar3d.audio.prior import load_prior

    d = json.loads(Path(path).read_text())
    run = Path(d["run"])
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    prior = load_prior(Path(d["prior"])) if d.get("prior") else None
    s, c, real = d["self_driven"], d["cross_driven"], d["real_clip"]
    # the real clip read as the avatar is (at the fit resolution); evals from before it: as tracked
    a, ra = c["articulation"], real.get("articulation_fit_resolution", real["articulation"])
    closure_vs_real, vowel_vs_real = a.get("bilabial_closure_rate_vs_real"), a.get("open_vowel_opening_vs_real")
    silent, bound = c.get("silent_settled_opening_median"), real.get("train_opening_p10_fit_resolution")
    return {
        "eval": str(path),
        "avatar": run.name,
        "preset": config.get("fit", {}).get("preset"),
        "field": config.get("fit", {}).get("field", "gaussian"),
        "voice_match": None if prior is None else float(prior.voice_match),
        "contrast": None if prior is None else float(prior.contrast.max()),
        "contrast_away": None if prior is None else float(prior.contrast_away.max()),
        "wav": Path(c["audio"]).name,
        "opening_spread_vs_real": a.get("opening_spread_vs_real"),
        "jaw_spread_vs_real": a.get("jaw_spread_vs_real"),
        "bilabial_segments": a.get("bilabials"),
        "bilabial_closure_rate": a.get("bilabial_closure_rate"),
        "real_bilabial_closure_rate": ra.get("bilabial_closure_rate"),
        "open_vowel_opening": a.get("open_vowel_opening"),
        "real_open_vowel_opening": ra.get("open_vowel_opening"),
        "silent_settled_opening_median": silent,
        "silent_bound": bound,
        "field_shut_opening": s.get("shut_opening_tracked_motion"),
        "cross_sync_r": c.get("sync_r"),
        "self_opening_r_audio_driven": s.get("mouth_opening_r_audio_driven"),
        "self_opening_spread_ratio_audio_driven": s.get("opening_spread_ratio_audio_driven"),
        "targets": {
            "spread": _check(a.get("opening_spread_vs_real"), lambda v: v >= SPREAD_MIN),
            "closure": _check(closure_vs_real, lambda v: v >= CLOSURE_MIN),
            "open_vowels": _check(vowel_vs_real, lambda v: abs(v - 1) <= VOWEL_TOL),
            "silence": None if silent is None or bound is None else bool(silent <= bound),
            "self_r": _check(s.get("mouth_opening_r_audio_driven"), lambda v: v >= SELF_R_MIN),
            "self_spread": _check(s.get("opening_spread_ratio_audio_driven"), lambda v: v >= SELF_SPREAD_MIN),
        },
    }


def markdown(rows: list[dict]) -> str:
    f = lambda v, k=2: "n/a" if v is None else f"{v:.{k}f}"  # noqa: E731
    mark = lambda ok: "" if ok is None else (" ✓" if ok else " ✗")  # noqa: E731
    lines = [
        "| avatar | preset | voice match / contrast (toward, away from rest) | wav | opening spread vs real | jawOpen spread vs real | bilabial closure "
        "(segments; real) | open-vowel opening (real) | silent opening (bound; field's shut frames) | cross sync r | self-driven r / spread |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["targets"]
        lines.append(
            f"| {r['avatar']} | {r['preset']} | {f(r['voice_match'], 1)} / {f(r.get('contrast'), 1)}, {f(r.get('contrast_away'), 1)} | {r['wav']} | "
            f"{f(r['opening_spread_vs_real'])}{mark(t['spread'])} | {f(r['jaw_spread_vs_real'])} | "
            f"{f(r['bilabial_closure_rate'])} ({r['bilabial_segments']}; {f(r['real_bilabial_closure_rate'])}){mark(t['closure'])} | "
            f"{f(r['open_vowel_opening'])} ({f(r['real_open_vowel_opening'])}){mark(t['open_vowels'])} | "
            f"{f(r['silent_settled_opening_median'], 4)} ({f(r['silent_bound'], 4)}; {f(r.get('field_shut_opening'), 4)}){mark(t['silence'])} | "
            f"{f(r['cross_sync_r'])} | {f(r['self_opening_r_audio_driven'])}{mark(t['self_r'])} / "
            f"{f(r['self_opening_spread_ratio_audio_driven'])}{mark(t['self_spread'])} |"
        )
    return "\n".join(lines) + "\n"


def main(config: SummaryConfig) -> None:
    rows = [summarise(p) for p in config.evals]
    result = {**provenance("cpu"), "targets": {"spread_min": SPREAD_MIN, "closure_min_vs_real": CLOSURE_MIN,
                                              "open_vowel_tolerance": VOWEL_TOL, "self_r_min": SELF_R_MIN,
                                              "self_spread_min": SELF_SPREAD_MIN}, "rows": rows}
    with atomic_path(config.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(config.out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main(tyro.cli(SummaryConfig))

"""Benchmark of the audio-to-motion prior; writes bench/results/prior.json.

    python bench/prior.py --datasets D1 D2 D3 [--held-out-only D4 ...] [--driving A.wav ...]
    python bench/prior.py --expected-only        # re-record tests/data/prior_expected.json

Sections of the JSON:
- ``leave_one_speaker_out``: for each dataset, a prior trained (same command settings as the
  shipped one, see --steps) on the others, evaluated on it: Pearson r of predicted vs tracked
  jawOpen and the mean r over the mouth blendshapes the speaker moves; plus the r of a trivial
  loudness baseline (mean log-mel) for scale. Each ``--held-out-only`` dataset (a clip left out
  of the shipped prior's training set) is scored by a prior trained on all ``--datasets``.
- ``shipped``: the packaged weights: r on each dataset (in-sample: they were trained on them),
  silence test on the driving clips (2 s of digital silence inserted mid-clip), streaming vs
  offline max abs difference and CPU ms per 20 ms chunk, and a fresh isolated interpreter with
  sockets disabled loading them from the package and reproducing the in-process numbers.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from avatar3d.audio import features as A  # noqa: E402
from avatar3d.audio import prior as P  # noqa: E402
from avatar3d.drive.sync import pearson  # noqa: E402
from avatar3d.core.dataset import AUDIO_RATE  # noqa: E402
from avatar3d.fsutil import write_json  # noqa: E402

EXPECTED = REPO / "tests" / "data" / "prior_expected.json"
FINETUNE_STEPS = 300  # per-identity fine-tuning in the LOSO folds (as fit would)
RIDGE_BACK = 8  # own-audio ridge context: frames before each frame, and as many ahead as the prior hears
RIDGE_LAGS = tuple(range(-RIDGE_BACK, P.PriorNetConfig().lookahead + 1))
RIDGE_LAMBDA = 1e3


def fixed_input() -> np.ndarray:
    from test_prior import fixed_input as f

    return f()


def write_expected() -> dict:
    prior = P.load_prior()
    with P.shipped_prior_path().open("rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    motion = P.predict_motion_from_audio(prior, fixed_input())
    obj = {
        "sha256": sha,
        "note": "predictions of avatar3d/assets/prior.pt on tests/test_prior.py::fixed_input, every 10th frame",
        "motion_every_10th_frame": np.round(motion[::10].astype(np.float64), 7).tolist(),
    }
    write_json(EXPECTED, obj)
    return obj


def own_audio_ridge(clip: P.SpeakerClip) -> dict:
    """How much of a speaker's jawOpen its *own* audio predicts: a ridge regression on the frame
    mean of the mel features over ``RIDGE_LAGS`` frames around each frame, trained on one half
    of the clip and scored (Pearson r) on the other, both ways, mean. ``_offset``: tracks shifted
    by the clip's measured audio/mouth offset for training and scoring. A yardstick for what a
    generic prior could reach on that clip, not a model we ship."""
    mel = clip.features.mean(axis=1)  # [N, 80]
    n = len(mel)
    X = np.concatenate([mel[np.clip(np.arange(n) + lag, 0, n - 1)] for lag in RIDGE_LAGS], axis=1)
    halves = (np.arange(n) < n // 2, np.arange(n) >= n // 2)
    out = {}
    for suffix, lag in (("", 0), ("_offset", clip.offset)):
        motion, valid = P.shift_tracks(clip.motion, clip.valid, lag)
        jaw = motion[:, P.JAW_OPEN]
        rs = []
        for a, b in ((0, 1), (1, 0)):
            tr, te = halves[a] & valid, halves[b] & valid
            mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
            Xn = (X[tr] - mu) / sd
            w = np.linalg.solve(Xn.T @ Xn + RIDGE_LAMBDA * np.eye(X.shape[1]), Xn.T @ (jaw[tr] - jaw[tr].mean()))
            rs.append(pearson(((X[te] - mu) / sd) @ w, jaw[te]))
        out["own_audio_ridge_jawOpen_r" + suffix] = float(np.mean(rs))
    return out


def _fold(held: Path, datasets: list[Path], net: P.PriorNetConfig, hp: P.TrainHyper) -> dict:
    train = [d for d in datasets if d != held]
    t0 = time.perf_counter()
    prior = P.train_prior(train, net, hp, device="cpu", progress=False)
    clip = P.load_clip(held, max_offset=hp.max_offset)
    res = P.evaluate_clip(prior, clip)
    loud = P.speech_loudness(clip.features)  # [N] dB
    res["loudness_baseline_jawOpen_r"] = pearson(loud[clip.valid], clip.motion[clip.valid, P.JAW_OPEN])
    res.update(own_audio_ridge(clip))
    # what fit does: fine-tune on the held-out speaker's train split, score its val split
    val = P.load_clip(held, max_offset=hp.max_offset, split="val")
    val = P.SpeakerClip(val.name, val.features, val.motion, val.valid, val.rest, val.scale, clip.offset)
    tuned = P.finetune_prior(prior, [held], steps=FINETUNE_STEPS, device="cpu")
    for tag, model in (("generic", prior), ("finetuned", tuned)):
        ev = P.evaluate_clip(model, val)
        res[f"val_split_{tag}"] = {k: v for k, v in ev.items() if "per_channel" not in k}
    res["trained_on"] = [d.name for d in train]
    res["train_av_offsets"] = prior.train_info["av_offsets"]
    res["train_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"LOSO {held.name}: jawOpen r {res['jawOpen_r']:.3f}, mouth mean r {res['mouth_mean_r']:.3f}", flush=True)
    return res


def loso(
    datasets: list[Path], net: P.PriorNetConfig, hp: P.TrainHyper, jobs: int, held_out_only: Sequence[Path] = ()
) -> list[dict]:
    """One prior per held-out dataset, trained on the other ``datasets``; each of ``held_out_only``
    is scored by a prior trained on all ``datasets``. ``jobs`` folds train at once (processes)."""
    held = list(datasets) + list(held_out_only)
    fold = functools.partial(_fold, datasets=datasets, net=net, hp=hp)
    if jobs <= 1:
        rows = list(map(fold, held))
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(fold, held))
    for r, d in zip(rows, held):
        r["held_out_only"] = d in held_out_only
    return rows


def silence_test(prior: P.AudioMotionPrior, wav: Path) -> dict:
    """2 s of digital silence inserted at a frame boundary mid-clip. ``pass``: jawOpen below the
    training clips' 10th percentile in every silent frame whose look-ahead is silent too (the
    last ``lookahead`` frames of the gap already hear the speech coming back)."""
    audio = A.load_audio(wav)
    n = A.num_frames_for(len(audio))
    cut = (n // 2) * 640
    audio = np.concatenate([audio[:cut], np.zeros(2 * AUDIO_RATE, np.float32), audio[cut:]])
    jaw = P.predict_motion_from_audio(prior, audio)[:, P.JAW_OPEN]
    s0, s1 = n // 2, n // 2 + 50
    quiet = slice(s0, s1 - prior.lookahead)
    p10 = prior.train_info["jaw_open_p10"]
    return {
        "clip": wav.name,
        "silent_frames": 50,
        "jawOpen_max_silent_lookahead": float(jaw[quiet].max()),
        "jawOpen_max_all_50": float(jaw[s0:s1].max()),
        "jawOpen_last_frames_of_gap": [round(float(x), 4) for x in jaw[s1 - prior.lookahead : s1]],
        "jawOpen_max_step_silent_lookahead": float(np.abs(np.diff(jaw[quiet])).max()),
        "jawOpen_median_in_speech": float(np.median(np.delete(jaw, np.r_[s0:s1]))),
        "training_jawOpen_p10": p10,
        "pass": bool(jaw[quiet].max() < p10),
        "pass_all_50": bool(jaw[s0:s1].max() < p10),
    }


def streaming_test(prior: P.AudioMotionPrior, audio: np.ndarray) -> dict:
    offline = P.predict_motion_from_audio(prior, audio)
    stream = P.PriorStream(prior)
    outs, cpu, wall = [], [], []
    with torch.inference_mode():
        for i in range(0, len(audio), 320):
            c0, w0 = time.thread_time(), time.perf_counter()
            outs.append(stream.push(audio[i : i + 320]))
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w0)
    outs.append(stream.flush())
    online = np.concatenate(outs)
    cpu_ms, wall_ms = 1e3 * np.array(cpu), 1e3 * np.array(wall)
    return {
        "seconds_of_audio": len(audio) / AUDIO_RATE,
        "chunk_ms": 20,
        "lookahead_ms": prior.lookahead * 40,
        "max_abs_diff_vs_offline": float(np.abs(online - offline).max()),
        "tolerance": 1e-4,
        "cpu_ms_per_chunk_mean": float(cpu_ms.mean()),
        "cpu_ms_per_chunk_p99": float(np.percentile(cpu_ms, 99)),
        "cpu_ms_per_chunk_max": float(cpu_ms.max()),
        "wall_ms_per_chunk_mean": float(wall_ms.mean()),
        "wall_ms_per_chunk_p99": float(np.percentile(wall_ms, 99)),
        "torch_threads": torch.get_num_threads(),
    }


def fresh_interpreter_test() -> dict:
    expected = json.loads(EXPECTED.read_text()) if EXPECTED.is_file() else None
    here = P.predict_motion_from_audio(P.load_prior(), fixed_input())
    with open("/tmp/_prior_bench_audio.npy", "wb") as f:
        np.save(f, fixed_input())
    code = textwrap.dedent(
        """
        import json, socket, numpy as np
        def _no_network(*a, **k):
            raise OSError("network disabled")
        socket.socket.connect = socket.socket.connect_ex = _no_network
        socket.create_connection = socket.getaddrinfo = _no_network
        from avatar3d.audio.prior import load_prior, predict_motion_from_audio, shipped_prior_path
        m = predict_motion_from_audio(load_prior(), np.load("/tmp/_prior_bench_audio.npy"))
        print(json.dumps({"where": str(shipped_prior_path()), "motion": m.tolist()}))
        """
    )
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return {"ok": False, "stderr": res.stderr[-2000:]}
    got = json.loads(res.stdout.strip().splitlines()[-1])
    out = {
        "ok": True,
        "loaded_from": got["where"],
        "max_abs_diff_vs_in_process": float(np.abs(np.array(got["motion"]) - here).max()),
    }
    if expected is not None:
        out["max_abs_diff_vs_recorded_expected"] = float(
            np.abs(np.array(got["motion"])[::10] - np.array(expected["motion_every_10th_frame"])).max()
        )
    return out


def markdown(result: dict) -> str:
    """The tables for BENCHMARKS.md."""
    lines = ["## Audio-to-motion prior (`python bench/prior.py`)", ""]
    lo = result.get("leave_one_speaker_out")
    if lo:
        lines += [
            f"Leave-one-speaker-out ({lo['steps']} steps per prior, CPU). r = Pearson of predicted vs tracked "
            "over the held-out clip; 'offset' columns: tracks shifted by the clip's measured audio/mouth offset; "
            f"'own audio': a ridge regression on the speaker's own mel ({-RIDGE_LAGS[0]} frames back, {RIDGE_LAGS[-1]} "
            "ahead) trained on one half of the clip and scored on the other (`own_audio_ridge`), raw / offset.",
            "",
            "| held out | frames | jawOpen r | mouth mean r | offset (frames) | jawOpen r (offset) | mouth mean r (offset) | loudness baseline jawOpen r | own audio ridge jawOpen r |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in lo["rows"]:
            never = " (never trained on)" if r.get("held_out_only") else ""
            lines.append(
                f"| {r['clip']}{never} | {r['frames']} | {r['jawOpen_r']:.3f} | {r['mouth_mean_r']:.3f} | {r['av_offset_frames']} | "
                f"{r['jawOpen_r_offset']:.3f} | {r['mouth_mean_r_offset']:.3f} | {r['loudness_baseline_jawOpen_r']:.3f} | "
                f"{r['own_audio_ridge_jawOpen_r']:.3f} / {r['own_audio_ridge_jawOpen_r_offset']:.3f} |"
            )
        lines += [
            "",
            f"Per-identity fine-tuning (what fit does): each LOSO prior fine-tuned {FINETUNE_STEPS} steps on the held-out "
            "speaker's train split, scored on its val split (last 10 %, offset-corrected tracks).",
            "",
            "| speaker | val frames | generic jawOpen r | fine-tuned jawOpen r | generic mouth mean r | fine-tuned mouth mean r |",
            "|---|---|---|---|---|---|",
        ]
        for r in lo["rows"]:
            g, f = r["val_split_generic"], r["val_split_finetuned"]
            lines.append(
                f"| {r['clip']} | {g['frames_offset']} | {g['jawOpen_r_offset']:.3f} | {f['jawOpen_r_offset']:.3f} | "
                f"{g['mouth_mean_r_offset']:.3f} | {f['mouth_mean_r_offset']:.3f} |"
            )
        lines.append("")
    sh = result["shipped"]
    lines += ["Shipped weights: silence (2 s of digital silence inserted mid-clip; 'silent look-ahead' = the "
              "first 48 of the 50 frames, whose 80 ms look-ahead is silent too)", "",
              "| driving clip | jawOpen max, silent look-ahead | jawOpen max, all 50 | last 2 frames | training p10 | pass (48) | pass (50) |",
              "|---|---|---|---|---|---|---|"]
    for r in sh["silence"]:
        lines.append(
            f"| {r['clip']} | {r['jawOpen_max_silent_lookahead']:.4f} | {r['jawOpen_max_all_50']:.4f} | "
            f"{r['jawOpen_last_frames_of_gap']} | {r['training_jawOpen_p10']:.4f} | {r['pass']} | {r['pass_all_50']} |"
        )
    st = sh["streaming"]
    lines += [
        "",
        f"Streaming (20 ms chunks, look-ahead {st['lookahead_ms']} ms): max abs diff vs offline "
        f"{st['max_abs_diff_vs_offline']:.2e} (tolerance {st['tolerance']:.0e}); CPU per chunk mean "
        f"{st['cpu_ms_per_chunk_mean']:.3f} ms, p99 {st['cpu_ms_per_chunk_p99']:.3f} ms, max {st['cpu_ms_per_chunk_max']:.3f} ms.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", type=Path, default=[], help="avatar3d preprocess datasets (one per speaker)")
    ap.add_argument("--held-out-only", nargs="*", type=Path, default=[],
                    help="datasets scored as held-out speakers but never trained on (clips left out of the shipped prior)")
    ap.add_argument("--driving", nargs="*", type=Path, default=None, help="driving audio for the silence test")
    ap.add_argument("--steps", type=int, default=P.TrainHyper().steps, help="training steps of each LOSO prior")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prior.json")
    ap.add_argument("--skip-loso", action="store_true", help="keep the LOSO section of an existing --out file")
    ap.add_argument("--jobs", type=int, default=1, help="LOSO folds trained at once (set OMP_NUM_THREADS=1)")
    ap.add_argument("--expected-only", action="store_true", help="only re-record tests/data/prior_expected.json")
    args = ap.parse_args()
    both = sorted({d.resolve() for d in args.datasets} & {d.resolve() for d in args.held_out_only})
    if both:
        ap.error(f"a dataset cannot be both trained on and held-out-only: {', '.join(map(str, both))}")
    if args.expected_only:
        write_expected()
        print(f"wrote {EXPECTED}")
        return
    if args.driving is None:
        args.driving = sorted((REPO.parent / "shared" / "data" / "audio").glob("*.wav"))
    result: dict = {
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "command": " ".join(sys.argv),
    }
    net, hp = P.PriorNetConfig(), P.TrainHyper(steps=args.steps)
    if args.skip_loso and args.out.is_file():
        old = json.loads(args.out.read_text())
        if "leave_one_speaker_out" in old:
            result["leave_one_speaker_out"] = old["leave_one_speaker_out"]
            result["leave_one_speaker_out_command"] = old.get("command")
    if args.datasets and not args.skip_loso:
        rows = loso(args.datasets, net, hp, args.jobs, args.held_out_only)
        result["leave_one_speaker_out"] = {
            "net": {k: list(v) if isinstance(v, tuple) else v for k, v in net.__dict__.items()},
            "steps": hp.steps,
            "rows": rows,
            "min_jawOpen_r": min(r["jawOpen_r"] for r in rows),
            "mean_jawOpen_r": float(np.mean([r["jawOpen_r"] for r in rows])),
            "mean_mouth_r": float(np.mean([r["mouth_mean_r"] for r in rows])),
            "target_jawOpen_r": 0.6,
        }
    prior = P.load_prior()
    shipped: dict = {"train_info": {k: v for k, v in prior.train_info.items() if k != "loss_curve"}}
    with P.shipped_prior_path().open("rb") as f:
        data = f.read()
    shipped["size_mb"] = round(len(data) / 1e6, 3)
    shipped["sha256"] = hashlib.sha256(data).hexdigest()
    if args.datasets:
        shipped["in_sample"] = [
            {k: v for k, v in P.evaluate_clip(prior, P.load_clip(d, max_offset=hp.max_offset)).items() if "per_channel" not in k}
            for d in args.datasets
        ]
    shipped["silence"] = [silence_test(prior, w) for w in args.driving]
    long_audio = A.load_audio(args.driving[0]) if args.driving else fixed_input()
    shipped["streaming"] = streaming_test(prior, long_audio[: 30 * AUDIO_RATE])
    shipped["fresh_interpreter_no_network"] = fresh_interpreter_test()
    result["shipped"] = shipped
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "shipped"}, indent=1)[:3000])
    print(json.dumps({k: shipped[k] for k in ("silence", "streaming", "fresh_interpreter_no_network")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""What baking costs: :mod:`avatar3d.gaussian.bake` against the fitted avatar, over pruning thresholds.

    python bench/bake.py RUN [RUN ...] [--scales 1 4 16] [--samples 1536] [--out bench/results/bake.json]

For each run (Gaussian field, motion-only): the val frames drawn by the fitted avatar and by its
bake, pruned at each multiple ``--scales`` of the default thresholds (:class:`BakeConfig`): PSNR of
the baked render against the full render (mean and worst frame, premultiplied RGB over the head
window), PSNR / head PSNR / LMD against the real frames beside the full avatar's
(:func:`avatar3d.drive.val.val_metrics`, one implementation), the share of channel terms kept and
the file's quantisation (:mod:`avatar3d.gaussian.webpack`: int8 terms per channel and component)
applied, so the numbers are the file's. The terms take 520 bytes per face Gaussian whatever the pruning
(pruned terms are zeros, which compress). JSON to --out (and stdout); BENCHMARKS.md has the table.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import peak_rss_gb, provenance, report  # noqa: E402


def file_weights(weights: torch.Tensor) -> torch.Tensor:
    """Baked weights [53, N, 10] as the file stores them (int8 terms, float16 bias) and reads them back."""
    from avatar3d.gaussian.webpack import quantised_terms

    q = quantised_terms(weights)
    terms = torch.from_numpy(q["face.terms"].astype(np.float32)) * torch.from_numpy(q["face.term_scale"])
    return torch.cat([terms.permute(1, 0, 2), weights[52:].half().float()], 0)


def zipped_bytes(weights: torch.Tensor) -> int:
    """Bytes of the file's int8 terms after zlib (what an HTTP transfer with gzip would carry)."""
    import zlib

    from avatar3d.gaussian.webpack import quantised_terms

    return len(zlib.compress(quantised_terms(weights)["face.terms"].tobytes(), 6))


def measure_run(run: Path, scales: list[float], samples: int, device: str) -> dict:
    from avatar3d.core.avatar import load_avatar
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene, window_frames
    from avatar3d.drive.metrics import psnr
    from avatar3d.drive.val import val_metrics
    from avatar3d.gaussian.bake import BakeConfig, LinearFaceDeformer, bake_avatar, clamp_range, prune

    info = open_run(run)
    avatar = load_avatar(info.run, device)
    scene = load_run_scene(info, avatar.audio_features)
    frames = window_frames(scene, scene.val)
    keys = ("psnr", "psnr_head", "ssim_head", "lmd_px")
    full, full_preds = val_metrics(avatar, scene, frames.__getitem__, device)
    out = {"run": str(run), "num_face": len(avatar.face), "num_mouth": len(avatar.mouth), "val_frames": len(scene.val),
           "full": {k: full.get(k) for k in keys}, "bakes": []}
    t0 = time.time()
    base = BakeConfig(samples=samples)
    baked, _ = bake_avatar(avatar, scene.motion[np.asarray(scene.train)], replace(
        base, prune_means_cm=0.0, prune_quats=0.0, prune_log_scales=0.0))
    out["bake_seconds"] = round(time.time() - t0, 1)
    unpruned = baked.face_deform.weights.detach().cpu()
    lo, hi = clamp_range(avatar.face_deform)
    for scale in scales:
        cfg = replace(base, prune_means_cm=base.prune_means_cm * scale, prune_quats=base.prune_quats * scale,
                      prune_log_scales=base.prune_log_scales * scale)
        weights, kept = prune(unpruned, lo, hi, cfg) if scale > 0 else (unpruned, {})
        baked.face_deform = LinearFaceDeformer(file_weights(weights), lo, hi).to(device)
        metrics, preds = val_metrics(baked, scene, frames.__getitem__, device)
        vs_full = [float(psnr(b, a)) for a, b in zip(full_preds, preds)]
        out["bakes"].append({
            "threshold_scale": scale, "thresholds": [cfg.prune_means_cm, cfg.prune_quats, cfg.prune_log_scales],
            "kept": kept, "terms_zip_mb": round(zipped_bytes(weights) / 1e6, 2),
            "psnr_vs_full_mean": float(np.mean(vs_full)), "psnr_vs_full_min": float(np.min(vs_full)),
            **{k: metrics.get(k) for k in keys},
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.25, 1.0, 4.0],
                    help="multiples of the default pruning thresholds (0 = unpruned)")
    ap.add_argument("--samples", type=int, default=1536)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [measure_run(r, args.scales, args.samples, args.device) for r in args.runs]
    report({"bench": "bake", **provenance(args.device), "samples": args.samples, "runs": runs,
            "peak_rss_gb": peak_rss_gb()}, args.out)


if __name__ == "__main__":
    main()

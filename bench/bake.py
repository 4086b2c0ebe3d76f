"""What baking costs: :mod:`avatar3d.gaussian.bake` against the fitted avatar, over pruning thresholds.

    python bench/bake.py RUN [RUN ...] [--scales 1 4 16] [--samples 3072] [--rank 8] [--out bench/results/bake.json]

For each run (Gaussian field, motion-only): the val frames drawn by the fitted avatar and by its
bake (its residual along ``--rank`` directions; 0: the affine terms only), pruned at each
multiple ``--scales`` of the default thresholds (:class:`BakeConfig`): PSNR of
the baked render against the full render (mean and worst frame, premultiplied RGB over the head
window), PSNR / head PSNR / LMD against the real frames beside the full avatar's
(:func:`avatar3d.drive.val.val_metrics`, one implementation), the share of channel terms kept and
the file's quantisation (:mod:`avatar3d.gaussian.webpack`: int8 terms and directions per channel
and component) applied, so the numbers are the file's. The terms take 520 bytes per face Gaussian
whatever the pruning (pruned terms are zeros, which compress), the directions 10 per rank. JSON to --out (and stdout); BENCHMARKS.md has the table.
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

from avatar3d.gaussian.bake import BakeConfig as _BakeConfig  # noqa: E402

BAKE_DEFAULTS = _BakeConfig()


def as_in_file(deformer):
    """A baked face field as the file stores it (int8 terms and directions, float16 bias) and reads it back."""
    from avatar3d.gaussian.webpack import WebPack, face_arrays, face_deformer

    arrays, residual = face_arrays(deformer)
    header = {"motion": {"lo": deformer.lo.tolist(), "hi": deformer.hi.tolist()}, "residual": residual}
    return face_deformer(WebPack(header, arrays)), arrays


def zipped_bytes(arrays: dict) -> int:
    """Bytes of the file's int8 terms and directions after zlib (what an HTTP transfer with gzip would carry)."""
    import zlib

    return sum(len(zlib.compress(arrays[k].tobytes(), 6)) for k in ("face.terms", "face.residual") if k in arrays)


def measure_run(run: Path, scales: list[float], samples: int, rank: int, device: str) -> dict:
    from avatar3d.core.avatar import load_avatar
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene, window_frames
    from avatar3d.drive.metrics import psnr
    from avatar3d.drive.val import val_metrics
    from avatar3d.gaussian.bake import BakeConfig, bake_avatar

    info = open_run(run)
    avatar = load_avatar(info.run, device)
    scene = load_run_scene(info, avatar.audio_features)
    frames = window_frames(scene, scene.val)
    keys = ("psnr", "psnr_head", "ssim_head", "lmd_px")
    full, full_preds = val_metrics(avatar, scene, frames.__getitem__, device)
    out = {"run": str(run), "num_face": len(avatar.face), "num_mouth": len(avatar.mouth), "val_frames": len(scene.val),
           "full": {k: full.get(k) for k in keys}, "bakes": []}
    base = BakeConfig(samples=samples, residual_rank=rank)
    for scale in scales:
        cfg = replace(base, prune_means_cm=base.prune_means_cm * scale, prune_quats=base.prune_quats * scale,
                      prune_log_scales=base.prune_log_scales * scale)
        t0 = time.time()
        baked, summary = bake_avatar(avatar, scene.motion[np.asarray(scene.train)], cfg)
        seconds = time.time() - t0
        baked.face_deform, arrays = as_in_file(baked.face_deform.cpu())
        baked = baked.to(device)
        metrics, preds = val_metrics(baked, scene, frames.__getitem__, device)
        vs_full = [float(psnr(b, a)) for a, b in zip(full_preds, preds)]
        out["bakes"].append({
            "threshold_scale": scale, "thresholds": [cfg.prune_means_cm, cfg.prune_quats, cfg.prune_log_scales],
            "kept": summary["kept"], "residual": summary["residual"], "bake_seconds": round(seconds, 1),
            "terms_zip_mb": round(zipped_bytes(arrays) / 1e6, 2),
            "psnr_vs_full_mean": float(np.mean(vs_full)), "psnr_vs_full_min": float(np.min(vs_full)),
            **{k: metrics.get(k) for k in keys},
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.25, 1.0, 4.0],
                    help="multiples of the default pruning thresholds (0 = unpruned)")
    ap.add_argument("--samples", type=int, default=BAKE_DEFAULTS.samples)
    ap.add_argument("--rank", type=int, default=BAKE_DEFAULTS.residual_rank,
                    help="directions of the residual (0 = the affine terms only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [measure_run(r, args.scales, args.samples, args.rank, args.device) for r in args.runs]
    report({"bench": "bake", **provenance(args.device), "samples": args.samples, "rank": args.rank, "runs": runs,
            "peak_rss_gb": peak_rss_gb()}, args.out)


if __name__ == "__main__":
    main()

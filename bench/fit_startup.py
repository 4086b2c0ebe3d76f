"""Time to the first training step and peak host RAM of `avatar3d fit` on a dataset.

    python bench/fit_startup.py DATA --preset default --out bench/results/fit_startup_default.json

Runs the fit command's own entry point (``run_fit``) in this process and stops it right after its
first optimisation step; reports the wall time from the call to that step and the process's peak
resident memory (``ru_maxrss``) then, and, after waiting for every training frame to be loaded
(frames streamed in the background), the time that took, the peak memory with the whole clip held
and the frame store's size; with the device and the commit. One preset per process, so peak RSS
belongs to that preset alone.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from provenance import peak_rss_gb, provenance, report

class _FirstStep(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import avatar3d.gaussian.trainer as fit_data  # the module the fit command loads its data through
    from avatar3d.fit import FitConfig, run_fit

    loaded = []
    load = fit_data.load_fit_data
    fit_data.load_fit_data = lambda *a, **kw: loaded.append(load(*a, **kw)) or loaded[-1]
    t0 = time.time()
    first = {}

    def on_step(step: int) -> None:
        first["seconds"] = time.time() - t0
        first["rss"] = peak_rss_gb()
        data = loaded[-1]
        data.frames.wait(data.num_frames)
        first["all_frames_seconds"] = time.time() - t0
        first["store"] = (data.frames.form, data.frames.nbytes() / 2**30)
        raise _FirstStep

    with tempfile.TemporaryDirectory() as tmp:
        config = FitConfig(args.data, Path(tmp) / "run", preset=args.preset, device=args.device, progress=False)
        try:
            run_fit(config, on_step=on_step)
        except _FirstStep:
            pass
    result = {
        "data": str(args.data), "preset": args.preset, "first_step_seconds": round(first["seconds"], 1),
        "peak_rss_gb_at_first_step": first["rss"], "all_frames_loaded_seconds": round(first["all_frames_seconds"], 1),
        "peak_rss_gb": peak_rss_gb(), "frame_store": first["store"][0],
        "frame_store_gb": round(first["store"][1], 3), **provenance(args.device),
    }
    report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of `avatar3d synth` (the synthetic talking subject); writes bench/results/synth.json.

    python bench/synth.py [--json PATH] [--seconds 10] [--size 512] [--seed 0]

Runs the command in a subprocess on a fresh output folder and records its wall time, the CPU time
of the child (user + sys), its peak resident memory, the stage timings from truth.json (setup:
photo landmarks, segmentation, mesh; render: rasterizing every frame), and the folder's size.
Target (issue 7): a 10 s 512x512 clip in well under a minute on a 2-core machine. The load
average before and after is recorded because wall times mean little on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "synth.json")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from avatar3d.fsutil import write_json

    work = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    out = work / "synth"
    try:
        load_before = os.getloadavg()
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "avatar3d.cli", "synth", "-o", str(out), "--seconds", str(args.seconds),
               "--size", str(args.size), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        info = json.loads((out / "truth.json").read_text())
        result = {
            "command": " ".join(cmd[1:]),
            "seconds_of_video": args.seconds,
            "size": args.size,
            "num_frames": info["num_frames"],
            "wall_s": round(wall, 2),
            "child_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "stage_seconds": info["seconds"],
            "render_ms_per_frame": round(1000 * info["seconds"]["render"] / info["num_frames"], 1),
            "output_mb": round(sum(p.stat().st_size for p in out.iterdir()) / 2**20, 2),
            "target": "10 s 512x512 clip in well under 60 s wall on 2 cores",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(),
            "machine": platform.platform(),
        }
        write_json(args.json, result)
        print(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

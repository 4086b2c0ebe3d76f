"""Benchmark of `avatar3d preprocess` on a real clip; writes bench/results/preprocess.json.

    python bench/preprocess.py [CLIP] [--json PATH] [--out DIR] [--size 512] [--keep]

Runs the command in a subprocess on a fresh output folder and records its wall time, its peak
resident memory (getrusage RUSAGE_CHILDREN: the largest child, i.e. the preprocess process), the
dataset's size on disk, and the numbers of the dataset's report.json (per-stage timings, frames
tracked, reprojection error, jitter). Targets (issue 2): <= 120 s wall for the 71 s CNN clip on a
2-core machine, peak RSS <= 4 GB, dataset <= 50 MB. The load average before and after is
recorded because the timings mean little on a busy machine.
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

from avatar3d.fsutil import write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "data" / "cnn_anchor_dfrf_71s_512.mp4"
DEFAULT_JSON = REPO / "bench" / "results" / "preprocess.json"
TARGETS = {"wall_s": 120.0, "peak_rss_bytes": 4 * 1024**3, "dataset_bytes": 50 * 1000**2}


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", nargs="?", type=Path, default=DEFAULT_CLIP, help="input clip (default: the 71 s CNN clip)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    ap.add_argument("--out", type=Path, default=None, help="dataset folder (default: a temp folder, removed)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--keep", action="store_true", help="keep the dataset folder")
    args = ap.parse_args(argv)
    if not args.clip.is_file():
        print(f"bench/preprocess.py: clip not found: {args.clip}", file=sys.stderr)
        return 2

    tmp = None
    if args.out is None:
        tmp = Path(tempfile.mkdtemp(prefix="avatar3d-bench-"))
        out = tmp / args.clip.stem
    else:
        out = args.out.absolute()
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)
    cmd = [sys.executable, "-m", "avatar3d.cli", "preprocess", str(args.clip), "-o", str(out), "--size", str(args.size)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss = usage.ru_maxrss * 1024  # Linux: KiB
    cpu_s = usage.ru_utime + usage.ru_stime  # all threads of the child: less sensitive to load
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        print(f"bench/preprocess.py: preprocess failed with status {proc.returncode}", file=sys.stderr)
        return 1
    report = json.loads((out / "report.json").read_text())
    size = dir_bytes(out)
    result = {
        "clip": args.clip.name,
        "command": " ".join(["avatar3d", *cmd[3:]]),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu_s, 2),
        "peak_rss_bytes": int(peak_rss),
        "dataset_bytes": int(size),
        "targets": TARGETS,
        "meets_targets": {k: bool(v <= TARGETS[k]) for k, v in (("wall_s", wall), ("peak_rss_bytes", peak_rss), ("dataset_bytes", size))},
        "frames": report["frames"],
        "tracked_fraction": report["tracked_fraction"],
        "frames_interpolated": report["frames_interpolated"],
        "reprojection_px_median": report["reprojection_px_median"],
        "reprojection_px_p95": report["reprojection_px_p95"],
        "jitter": report["jitter"],
        "stage_seconds": report["timings_s"],
        "summary_line": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(args.json, result)
    print(json.dumps({k: result[k] for k in ("wall_s", "peak_rss_bytes", "dataset_bytes", "meets_targets")}))
    if tmp is not None and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up, wall time and peak host RAM of `avatar3d render` on a fitted run.

    python bench/render_startup.py RUN --audio speech.wav --out bench/results/render_startup.json

Runs the render command's own entry point in this process and records the time from the call to
the first frame handed to the video writer, the total wall time and the peak resident memory
(``ru_maxrss``), with the device and the commit.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

from provenance import peak_rss_gb, provenance, report

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    render = importlib.import_module("avatar3d.drive.render")
    video = importlib.import_module("avatar3d.core.video")
    t0 = time.time()
    first: dict[str, float] = {}
    write = video.VideoWriter.write

    def timed_write(self, frame):
        first.setdefault("seconds", time.time() - t0)
        return write(self, frame)

    video.VideoWriter.write = timed_write
    with tempfile.TemporaryDirectory() as tmp:
        config = render.RenderConfig(args.run, args.audio, Path(tmp) / "out.mp4", device=args.device, progress=False)
        summary = render.run_render(config)
    wall = time.time() - t0
    result = {
        "run": str(args.run), "audio": str(args.audio), "threads": args.threads, "frames": summary["frames"],
        "first_frame_seconds": round(first["seconds"], 2), "wall_seconds": round(wall, 2),
        "peak_rss_gb": peak_rss_gb(), **provenance(args.device),
    }
    report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

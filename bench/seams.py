"""Seams, ghosts and holes of fitted avatars: :mod:`avatar3d.drive.seams` over runs and driving wavs.

    python bench/seams.py RUN [RUN ...] [--audio WAV ...] [--seconds 10] [--out bench/results/seams.json]
        [--sheets DIR]

For each run: its val frames driven by their tracked motion (self-driven), and the first
``--seconds`` of each driving wav (default: all of ../shared/data/audio) rendered as
``avatar3d render`` renders them (cross-driven); per sequence the seam ratio, ghost area and hole
share, the frames whose motion code leaves the training range; the val frames turned as far as the
viewer lets them (:func:`turned_holes`); and, with ``--sheets``, the contact sheet of the worst
frames per run. The same code as ``avatar3d eval``'s ``seams`` (eval adds the
tracker and phone measures; this bench leaves them out, so many runs x wavs fit a session).
JSON to --out (and stdout); BENCHMARKS.md has the table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import peak_rss_gb, provenance, report  # noqa: E402

from avatar3d.drive.seams import HOLE_SHARE  # noqa: E402

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"


def measure_run(run: Path, wavs: list[Path], seconds: float, device: str, sheets: Path | None) -> dict:
    from avatar3d.core.avatar import load_avatar
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene
    from avatar3d.drive.evaluate import val_seams
    from avatar3d.drive.render import (FrameBases, drive, load_driving_audio, load_run_prior, num_output_frames,
                                       render_composites)
    from avatar3d.drive.seams import SeamMeter, codes_out_of_range, measure_composites, write_sheets

    info = open_run(run)
    avatar = load_avatar(info.run, device)
    scene = load_run_scene(info, avatar.audio_features)
    prior, _ = load_run_prior(info.run, device)
    t0 = time.time()
    val_result, val = val_seams(avatar, scene, device)
    out = {"run": str(run), "dataset": str(info.data), "neck_reach": scene.neck_reach,
           "window": scene.window.to_json(), "val": val_result}
    pictures = [val.sheet(f"{run.name}: val frames, tracked motion")]
    train_codes = scene.motion[np.asarray(scene.train)].numpy()
    out["cross"] = {}
    for wav in wavs:
        audio16 = load_driving_audio(wav)[0][: int(seconds * 16000)]
        num = num_output_frames(len(audio16))
        driven = drive(avatar, scene, prior, audio16, num, "clip")
        bases = FrameBases(scene, driven.trajectory, keep_frames=True)
        meter = SeamMeter(scene.frame_size, scene.window.side / scene.window.size)
        for _ in measure_composites(meter, scene, bases, render_composites(avatar, scene, driven, bases, device)):
            pass
        res = meter.result()
        res["codes_out_of_training_range_frames"] = codes_out_of_range(driven.blendshapes.numpy(), train_codes)
        out["cross"][wav.stem] = res
        pictures.append(meter.sheet(f"{run.name}: {wav.stem}"))
    out["turned"] = turned_holes(avatar, scene, device)
    out["seconds"] = round(time.time() - t0, 1)
    if sheets is not None:
        sheets.mkdir(parents=True, exist_ok=True)
        write_sheets(sheets / f"{run.name}_seams.png", pictures)
    return out


def turned_holes(avatar, scene, device, every: int = 5) -> dict:
    """Every ``every``-th val frame with the head turned as far as the viewer lets it (its yaw and
    pitch limits, each way): how many of those poses lie beyond the training poses, and the holes
    torn through the render (:func:`avatar3d.drive.seams.enclosed_hole_share`; a frame with more
    than 1 % has one)."""
    from avatar3d.core.camera import Camera
    from avatar3d.drive.seams import PoseRange, enclosed_hole_share
    from avatar3d.viewer.session import turn_limits, turned

    yaw, pitch = turn_limits(scene.R[np.asarray(scene.train)].numpy())
    poses = PoseRange(scene.R[np.asarray(scene.train)].numpy())
    shares, beyond = [], 0
    with torch.no_grad():
        for i in np.asarray(scene.val)[::every]:
            cond = scene.conditioning(int(i), avatar.audio_window, device)
            for dy, dp in ((yaw, 0.0), (-yaw, 0.0), (0.0, pitch), (0.0, -pitch)):
                R = turned(scene.R[int(i)], dy, dp)
                beyond += int(poses.outside(R.numpy()[None])[0])
                cam = Camera.from_pose(scene.K, R, scene.t[int(i)], scene.window.size, scene.window.size, device)
                shares.append(enclosed_hole_share(avatar.render(cond, cam)[..., 3].cpu().numpy()))
    shares = np.array(shares)
    return {"yaw_limit": yaw, "pitch_limit": pitch, "renders": len(shares), "beyond_training": beyond,
            "hole_share_max": float(shares.max()), "hole_frames": int((shares > HOLE_SHARE).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--audio", nargs="*", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--sheets", type=Path, default=None, help="folder for one contact sheet PNG per run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wavs = args.audio if args.audio is not None else sorted(AUDIO_DIR.glob("*.wav"))
    runs = [measure_run(r, wavs, args.seconds, args.device, args.sheets) for r in args.runs]
    report({"bench": "seams", **provenance(args.device), "seconds_per_wav": args.seconds,
            "audio": [str(w) for w in wavs], "runs": runs, "peak_rss_gb": peak_rss_gb()}, args.out)


if __name__ == "__main__":
    main()

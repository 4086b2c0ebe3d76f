"""Benchmark: head render speed of a fitted avatar (deformation + rasterization, one frame at a time).

Renders the val frames of the avatar's dataset with their tracked poses and blendshapes at the
dataset's full frame size (or --size), after warm-up, and reports frames per second.

    python bench/render_fps.py RUN DATA                              # CUDA (gsplat) if available
    python bench/render_fps.py RUN DATA --device cpu --size 128 --out /tmp/fps.json
"""
from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import torch
import tyro

from avatar3d.core.avatar import Conditioning, load_avatar
from avatar3d.core.dataset import load_tracks, read_manifest
from avatar3d.fsutil import write_json
from avatar3d.core.camera import Camera
from avatar3d.gaussian.rasterize import resolve_backend


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Render-speed benchmark settings."""

    run: tyro.conf.Positional[Path]
    """A fitted run folder."""
    data: tyro.conf.Positional[Path]
    """The dataset it was fitted on (for poses and blendshapes)."""
    out: Path = Path("bench/results/render_fps.json")
    """Where to write the JSON results."""
    device: str = "cuda"
    """Device to render on."""
    size: int = 0
    """Rendered image side (0 = the dataset's frame size)."""
    frames: int = 200
    """Frames to time (cycling through the val split)."""
    warmup: int = 10


def main(cfg: BenchConfig) -> dict:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu")
    device = torch.device(cfg.device)
    avatar = load_avatar(cfg.run, device)
    manifest = read_manifest(cfg.data)
    tracks = load_tracks(cfg.data)
    size = cfg.size or manifest.size
    val = manifest.frame_indices("val")
    cams = [
        Camera.from_pose(tracks["K"], tracks["R"][i], tracks["t"][i], manifest.size, manifest.size, device)
        .crop_resize(0, 0, manifest.size, size)
        for i in val
    ]
    motion = torch.from_numpy(tracks["blendshapes"][val].astype(np.float32)).to(device)

    def render(k: int) -> torch.Tensor:
        j = k % len(val)
        return avatar.render(Conditioning(motion[j : j + 1]), cams[j])

    with torch.no_grad():
        for k in range(cfg.warmup):
            render(k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k in range(cfg.frames):
            render(k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    result = {
        "fps": cfg.frames / seconds,
        "ms_per_frame": 1000 * seconds / cfg.frames,
        "size": size,
        "frames": cfg.frames,
        "gaussians": sum(avatar.num_gaussians()),
        "backend": resolve_backend("auto", device),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "run": str(cfg.run),
    }
    write_json(cfg.out, result)
    print(result)
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))

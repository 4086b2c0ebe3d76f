"""Benchmark: head render speed of a fitted avatar (either field: deformation + rasterization, or
ray marching; one frame at a time).

Renders the val frames of the avatar's dataset with their tracked poses and blendshapes at the
dataset's full frame size (or --size), after warm-up, and reports frames per second. With
``--composite`` it also times whole output frames as `avatar3d render` makes them: the head at the
run's window, pasted over the frame's torso/background base into a uint8 frame on the CPU (the
bases decoded beforehand; video encoding not included).

    python bench/render_fps.py RUN DATA                              # CUDA (gsplat) if available
    python bench/render_fps.py RUN DATA --device cpu --size 128 --out /tmp/fps.json
"""
from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Literal

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
    composite: bool = False
    """Also time whole composited output frames (see module docstring)."""
    backend: Literal["auto", "dense", "gsplat"] = "auto"
    """Rasterizer."""


def main(cfg: BenchConfig) -> dict:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu")
    device = torch.device(cfg.device)
    from avatar3d.core.runs import open_run

    field = open_run(cfg.run).field
    avatar = load_avatar(cfg.run, device, **({"backend": cfg.backend} if field == "gaussian" else {}))
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
    composite = composite_fps(avatar, cfg, device) if cfg.composite else {}
    result = {
        **composite,
        "fps": cfg.frames / seconds,
        "ms_per_frame": 1000 * seconds / cfg.frames,
        "size": size,
        "frames": cfg.frames,
        "field": field,
        "gaussians": sum(avatar.num_gaussians()) if field == "gaussian" else None,
        "backend": resolve_backend(cfg.backend, device) if field == "gaussian" else "ray marching (PyTorch)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "run": str(cfg.run),
    }
    write_json(cfg.out, result)
    print(result)
    return result


def composite_fps(avatar, cfg: BenchConfig, device: torch.device) -> dict:
    """Frames per second of whole output frames (see module docstring)."""
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene
    from avatar3d.drive.render import FrameBases, paste

    scene = load_run_scene(open_run(cfg.run), avatar.audio_features)
    val = [int(i) for i in scene.val]
    bases = FrameBases(scene, np.array(val))
    images = {i: bases[i].image for i in val}  # decoded before timing

    def frame(k: int) -> np.ndarray:
        i = val[k % len(val)]
        rgba = avatar.render(scene.conditioning(i, avatar.audio_window, device), scene.camera(i, device))
        return paste(rgba, images[i], scene.window)

    with torch.no_grad():
        for k in range(cfg.warmup):
            frame(k)
        t0 = time.perf_counter()
        for k in range(cfg.frames):
            frame(k)
        seconds = time.perf_counter() - t0
    w = scene.window
    return {"composite_fps": cfg.frames / seconds, "composite_ms_per_frame": 1000 * seconds / cfg.frames,
            "composite_frame_size": scene.frame_size, "composite_head_window": [w.side, w.size]}


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))

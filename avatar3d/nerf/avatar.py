"""The NeRF field's avatar: the field, its head box and occupancy grid, drawn by marching rays.

:class:`NerfAvatar` implements :class:`avatar3d.core.avatar.Avatar` (``render`` a frame's head
RGBA for a motion code and camera); open a fitted one with :func:`avatar3d.core.avatar.load_avatar`.
:meth:`NerfAvatar.march` is the one marcher: training calls it on a batch of rays (stratified
samples, every sample evaluated that the occupancy grid keeps), ``render`` on every pixel of the
camera (even samples, rays stopped once their transmittance falls below 1e-4).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from avatar3d.core.avatar import Conditioning, write_avatar
from avatar3d.core.headbox import HeadBox
from avatar3d.core.runs import RunPaths
from avatar3d.errors import UserError
from avatar3d.core.motion import MotionStats
from avatar3d.nerf.config import NerfConfig
from avatar3d.nerf.field import NerfField
from avatar3d.nerf.march import MAX_DEPTH, OccupancyGrid, camera_rays, composite_segment, pixel_grid, ray_box, sample_along

SEGMENT = 16  # samples marched at a time at inference, between early-stop checks


@dataclass(frozen=True)
class NerfSpec:
    """What rebuilds a NeRF avatar before its weights are loaded (avatar.json)."""

    config: NerfConfig = field(default_factory=NerfConfig)
    axes: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # the head box's frame (rows)
    centre: tuple = (0.0, 0.0, 0.0)
    lo: tuple = (-10.0, -10.0, -10.0)
    hi: tuple = (10.0, 10.0, 10.0)
    field: str = "nerf"
    audio_features: str = ""
    """Name of the audio features (features/<name>.npy) the field listens to; "" = the motion code only."""
    audio_window: int = 0
    audio_dim: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(obj: dict) -> "NerfSpec":
        obj = dict(obj)
        obj["config"] = NerfConfig(**obj["config"])
        for k in ("centre", "lo", "hi"):
            obj[k] = tuple(float(v) for v in obj[k])
        obj["axes"] = tuple(tuple(float(v) for v in row) for row in obj["axes"])
        return NerfSpec(**obj)

    @staticmethod
    def of_box(config: NerfConfig, box: HeadBox, audio_features: str = "", audio_window: int = 0,
               audio_dim: int = 0) -> "NerfSpec":
        return NerfSpec(config, tuple(tuple(float(v) for v in r) for r in box.axes), tuple(float(v) for v in box.centre),
                        tuple(float(v) for v in box.lo), tuple(float(v) for v in box.hi),
                        audio_features=audio_features, audio_window=audio_window, audio_dim=audio_dim)


class NerfAvatar(nn.Module):
    """The field in its head box (see module docstring)."""

    def __init__(self, spec: NerfSpec, stats: MotionStats):
        super().__init__()
        self.spec = spec
        self.field = NerfField(spec.config, stats, spec.audio_dim if spec.audio_features else 0)
        self.register_buffer("axes", torch.tensor(spec.axes, dtype=torch.float32))
        self.register_buffer("centre", torch.tensor(spec.centre, dtype=torch.float32))
        self.register_buffer("lo", torch.tensor(spec.lo, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(spec.hi, dtype=torch.float32))
        self.occupancy = OccupancyGrid(spec.config.occupancy_resolution)

    @property
    def audio_features(self) -> str:
        return self.spec.audio_features

    @property
    def audio_window(self) -> int:
        return self.spec.audio_window

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.occupancy.cells = self.occupancy.cells.to(self.lo.device)
        return out

    # -- marching ----------------------------------------------------------------------------

    def local_rays(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """World rays [P, 3] -> the same rays in the head box's frame and where they enter and leave it."""
        o = (origins - self.centre) @ self.axes.T
        d = dirs @ self.axes.T
        near, far = ray_box(o, d, self.lo, self.hi)
        return o, d, near, far

    def march(self, origins: torch.Tensor, dirs: torch.Tensor, cond: Conditioning,
              generator: torch.Generator | None = None, early_stop: bool = False,
              with_error: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Colour (premultiplied) [P, 3] and alpha [P] of world rays ``origins``, ``dirs`` [P, 3]
        under the one frame of ``cond``; stratified samples with ``generator``, even ones without.
        With ``with_error`` (a field with ``uncertainty``), third the rays' expected photometric
        error [P]: the points' errors composited with the densities detached (it is the error
        head's to learn, not the geometry's); else None."""
        n = self.spec.config.samples_per_ray
        o, d, near, far = self.local_rays(origins, dirs)
        code = self.field.code(cond.motion, cond.audio)
        t, deltas = sample_along(near, far, n, generator)
        deltas = torch.where((far > near)[:, None], deltas, torch.zeros_like(deltas))
        size = self.hi - self.lo
        P = origins.shape[0]
        rgb = torch.zeros(P, 3, device=origins.device)
        error = torch.zeros(P, device=origins.device) if with_error else None
        depth = torch.zeros(P, device=origins.device)  # optical depth so far
        step = SEGMENT if early_stop else n
        for s in range(0, n, step):
            active = (far > near) & (depth < MAX_DEPTH) if early_stop else far > near
            if early_stop and not bool(active.any()):
                break
            tt, dd = t[:, s:s + step], deltas[:, s:s + step]
            u = (o[:, None] + tt[..., None] * d[:, None] - self.lo) / size  # [P, k, 3]
            keep = active[:, None] & self.occupancy.occupied(u) & (dd > 0)
            sigma = torch.zeros(tt.shape, device=origins.device)
            color = torch.zeros(tt.shape + (3,), device=origins.device)
            point_error = torch.zeros(tt.shape, device=origins.device) if with_error else None
            if bool(keep.any()):
                where = keep.nonzero(as_tuple=True)
                sig, col, err = self.field(u[keep], code)
                sigma = sigma.index_put(where, sig)
                color = color.index_put(where, col)
                if with_error:
                    point_error = point_error.index_put(where, err)
            if with_error:
                added_error, _ = composite_segment(sigma.detach(), point_error[..., None], dd, depth.detach())
                error = error + added_error[:, 0]
            added, depth = composite_segment(sigma, color, dd, depth)
            rgb = rgb + added
        return rgb, 1.0 - torch.exp(-depth), error

    # -- the avatar interface ----------------------------------------------------------------

    @torch.no_grad()
    def render(self, cond: Conditioning, camera) -> torch.Tensor:
        """RGBA of the head for one frame: [H, W, 4], colour premultiplied by alpha."""
        if cond.motion.shape[0] != 1:
            raise ValueError("render one frame at a time (conditioning batch of 1)")
        H, W = camera.height, camera.width
        pix = pixel_grid(W, H, self.lo.device)
        origins, dirs = camera_rays(camera.K, camera.viewmat, pix)
        out = torch.zeros(H * W, 4, device=self.lo.device)
        chunk = 1 << 14
        for s in range(0, H * W, chunk):
            rgb, alpha, _ = self.march(origins[s:s + chunk], dirs[s:s + chunk], cond, None, early_stop=True)
            out[s:s + chunk] = torch.cat([rgb, alpha[:, None]], -1)
        return out.reshape(H, W, 4)

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        state["occupancy.cells"] = self.occupancy.cells.cpu()
        return state

    def load_state_dict(self, state, strict: bool = True):
        state = dict(state)
        cells = state.pop("occupancy.cells", None)
        if cells is not None:
            self.occupancy.load_state_dict({"cells": cells})
        return super().load_state_dict(state, strict)

    def save(self, folder: Path) -> None:
        """Write avatar.json (spec) and avatar.pt (weights and occupancy grid) into ``folder``."""
        write_avatar(folder, self.spec.to_json(), self.state_dict())

    @staticmethod
    def from_state(spec: NerfSpec, state: dict) -> "NerfAvatar":
        stats = MotionStats.from_state(state, "field.")
        avatar = NerfAvatar(spec, stats)
        avatar.load_state_dict(state)
        return avatar

    @staticmethod
    def load(run_dir: Path, device: torch.device | str = "cpu") -> "NerfAvatar":
        """Load a fitted NeRF avatar from a RUN folder (JSON and weights-only torch)."""
        paths = RunPaths(Path(run_dir))
        if not paths.avatar_spec.is_file() or not paths.avatar_weights.is_file():
            raise UserError(f"not a fitted avatar run (no {paths.avatar_spec.name}/{paths.avatar_weights.name}): {paths.root}")
        try:
            spec = NerfSpec.from_json(json.loads(paths.avatar_spec.read_text()))
            state = torch.load(paths.avatar_weights, map_location="cpu", weights_only=True)
            return NerfAvatar.from_state(spec, state).to(device)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"corrupt or incompatible NeRF avatar in {paths.root} ({first[:160]}): run `avatar3d fit` again") from None

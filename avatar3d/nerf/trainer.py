"""The NeRF field's trainer: one step draws a training frame and a batch of its pixels, marches
their rays under the frame's tracked motion code (and audio window, for runs that listen to
audio) and head pose, composites over the frame's base as the avatar is composited everywhere
(:func:`avatar3d.core.avatar.composite`), and takes an L1 step plus the alpha term against the
head mask. The L1 weighs the inside of the mouth ``w_mouth`` more and, from ``lips_start`` of the
steps, the box around the lips ``w_lips`` more; with ``uncertainty``, from ``uncertainty_start``
of the steps, each ray also by the inverse of its predicted error beta = beta_min + the field's composited error (normalised to a mean weight
of 1 over the step's rays, detached), while the error head learns by the Laplace likelihood of
the detached error, |e| / beta + log beta. The occupancy grid is refreshed every
``occupancy_every`` steps after a warm-up, from the densities under a few training frames (the
most open and most shut mouths among them). Everything goes into the checkpoint, so a resumed fit
continues bit for bit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from avatar3d import fsutil
from avatar3d.core.headbox import head_box
from avatar3d.core.motion import MotionStats
from avatar3d.core.runs import RunPaths
from avatar3d.core.vocab import OUTER_LIPS, blendshape_index
from avatar3d.drive.metrics import psnr
from avatar3d.errors import UserError
from avatar3d.gaussian.config import FitParams
from avatar3d.gaussian.data import FitData, load_fit_data  # noqa: F401  (the fit command's data loader)
from avatar3d.gaussian.losses import make_target
from avatar3d.nerf.avatar import NerfAvatar, NerfSpec
from avatar3d.nerf.march import camera_rays

OCCUPANCY_FRAMES = 4  # training frames under whose conditioning the occupancy grid takes the max density


@dataclass
class Trainer:
    avatar: NerfAvatar
    opt: torch.optim.Optimizer
    generator: torch.Generator
    occupancy_frames: torch.Tensor  # [OCCUPANCY_FRAMES] long, dataset frame indices
    step: int = 0

    @staticmethod
    def start(data: FitData, params: FitParams, device, paths: RunPaths) -> "Trainer":
        generator = torch.Generator().manual_seed(params.seed)
        box = head_box(data.canonical, data.R, data.t, data.train, data.neck_reach)
        audio_dim = 0 if data.audio is None else int(data.audio.shape[1])
        spec = NerfSpec.of_box(params.nerf, box, params.audio_features,
                               params.audio_window if params.audio_features else 0, audio_dim)
        stats = MotionStats.of_codes(data.motion[torch.from_numpy(data.train)])
        avatar = NerfAvatar(spec, stats)
        avatar.field.reset_parameters(generator)
        fsutil.write_json(paths.avatar_spec, spec.to_json())
        return Trainer.create(avatar.to(device), params, generator, occupancy_frames(data))

    @staticmethod
    def create(avatar: NerfAvatar, params: FitParams, generator: torch.Generator, frames: torch.Tensor) -> "Trainer":
        grid, mlp = avatar.field.parameter_groups()
        opt = torch.optim.Adam([{"params": grid, "lr": params.nerf.lr_grid, "name": "grid"},
                                {"params": mlp, "lr": params.nerf.lr_mlp, "name": "mlp"}], eps=1e-15)
        return Trainer(avatar, opt, generator, frames)

    @staticmethod
    def resume(paths: RunPaths, params: FitParams, device) -> "Trainer":
        try:
            spec = NerfSpec.from_json(json.loads(paths.avatar_spec.read_text()))
            state = torch.load(paths.checkpoint, map_location="cpu", weights_only=True)
            avatar = NerfAvatar.from_state(spec, state["avatar"]).to(device)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise UserError(f"corrupt checkpoint in {paths.root}: {exc}") from None
        generator = torch.Generator()
        generator.set_state(state["generator"].cpu())
        trainer = Trainer.create(avatar, params, generator, state["occupancy_frames"])
        trainer.opt.load_state_dict(state["opt"])
        trainer.step = int(state["step"])
        return trainer

    def state_dict(self) -> dict:
        return {"step": self.step, "avatar": self.avatar.state_dict(), "opt": self.opt.state_dict(),
                "generator": self.generator.get_state(), "occupancy_frames": self.occupancy_frames}

    def checkpoint(self, paths: RunPaths) -> None:
        with fsutil.atomic_path(paths.checkpoint) as tmp:
            torch.save(self.state_dict(), tmp)

    def save_avatar(self, paths: RunPaths) -> None:
        self.avatar.eval().save(paths.root)

    def counts(self) -> dict[str, int]:
        """``primitives``: the occupied cells of the occupancy grid (what the field is made of, in
        the fit's log and summary)."""
        cells = int(self.avatar.occupancy.cells.sum())
        return {"primitives": cells, "occupied_cells": cells}

    def set_lr(self, params: FitParams) -> None:
        """Exponential decay of both learning rates, to 10 % at the last step."""
        frac = min(self.step / max(params.steps, 1), 1.0)
        for group in self.opt.param_groups:
            base = params.nerf.lr_grid if group["name"] == "grid" else params.nerf.lr_mlp
            group["lr"] = base * 0.1**frac

    def update_occupancy(self, data: FitData, params: FitParams, device) -> None:
        conds = [data.conditioning(int(i), params.audio_window, device) for i in self.occupancy_frames]
        codes = [self.avatar.field.code(cond.motion, cond.audio) for cond in conds]  # [1, C] each

        def density(u: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.avatar.field.density(u, code) for code in codes]).amax(0)

        self.avatar.occupancy.update(density, params.nerf.occupancy_threshold)

    def train_step(self, data: FitData, params: FitParams, device) -> tuple[dict[str, float], float]:
        c = params.nerf
        self.set_lr(params)
        drawable = data.drawable(self.step)
        i = int(data.train[torch.randint(drawable, (1,), generator=self.generator)])
        target = make_target(data, i, params.dilate_px, device)
        pix = ray_pixels(target.region, data.landmarks[i], c.rays_per_step, self.generator)  # [P, 2] long
        camera = data.camera(i, device)
        origins, dirs = camera_rays(camera.K, camera.viewmat, pix.float().to(device) + 0.5)
        cond = data.conditioning(i, params.audio_window, device)
        rgb, alpha, error = self.avatar.march(origins, dirs, cond, self.generator, with_error=c.uncertainty)
        y, x = pix[:, 1].to(device), pix[:, 0].to(device)
        bg, real = target.background[y, x], target.image[y, x]
        pred = rgb + (1.0 - alpha[:, None]) * bg
        weight = 1.0 + params.w_mouth * target.mouth[y, x]
        if self.step >= c.lips_start * params.steps:
            weight = weight + c.w_lips * lips_box_mask(data.landmarks[i], pix, data.window.size).to(device)
        e = (pred - real).abs().mean(-1)  # [P]
        terms = {}
        if error is not None:
            beta = c.beta_min + error
            if self.step >= c.uncertainty_start * params.steps:
                trust = (1.0 / beta).detach()
                weight = weight * trust / trust.mean()
            terms["uncertainty"] = c.w_uncertainty * (e.detach() / beta + torch.log(beta)).mean()
        terms["l1"] = (e * weight).sum() / weight.sum()
        terms["alpha"] = params.w_alpha * ((alpha - target.head[y, x]) ** 2).mean()
        loss = sum(terms.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        if self.step >= c.occupancy_warmup and self.step % c.occupancy_every == 0:
            self.update_occupancy(data, params, device)
        with torch.no_grad():
            inside = target.region[y, x] > 0
            p = psnr(pred[inside][None], real[inside][None]) if bool(inside.any()) else torch.tensor(float("nan"))
        named = {k: float(v.detach()) for k, v in terms.items()}
        named["total"] = float(loss.detach())
        return named, float(p)


def occupancy_frames(data: FitData) -> torch.Tensor:
    """The training frames under whose conditioning the occupancy grid takes the max density:
    spread over the clip's jawOpen (the most shut, the most open and quantiles between).
    [OCCUPANCY_FRAMES] long"""
    train = torch.from_numpy(data.train)
    order = torch.argsort(data.motion[train][:, blendshape_index("jawOpen")])
    picks = np.linspace(0, len(order) - 1, OCCUPANCY_FRAMES).round().astype(int)
    return train[order[picks]].long().clone()


def ray_pixels(region: torch.Tensor, landmarks: np.ndarray, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` pixels of a frame [S, S] to train on: half in the head region (``region`` > 0), a
    quarter in the box around the lips (``landmarks`` [478, 2] window pixels), a quarter anywhere
    in the window (alpha must fall to 0 off the head). [n, 2] long (x, y)"""
    S = region.shape[0]
    head = region.reshape(-1).nonzero()[:, 0].cpu()
    k_head = n // 2 if len(head) else 0
    picks = [head[torch.randint(len(head), (k_head,), generator=generator)]] if k_head else []
    x0, y0, x1, y1 = lips_box(landmarks, S)
    k_lips = n // 4
    lx = torch.randint(x0, x1 + 1, (k_lips,), generator=generator)
    ly = torch.randint(y0, y1 + 1, (k_lips,), generator=generator)
    picks.append(ly * S + lx)
    rest = n - k_head - k_lips
    picks.append(torch.randint(S * S, (rest,), generator=generator))
    flat = torch.cat(picks)
    return torch.stack([flat % S, flat // S], -1)


def lips_box(landmarks: np.ndarray, S: int) -> tuple[int, int, int, int]:
    """The box around the outer lips, grown by half its size, clipped to the window: x0, y0, x1, y1 (inclusive)."""
    lips = landmarks[list(OUTER_LIPS)]
    lo, hi = lips.min(0), lips.max(0)
    pad = 0.5 * (hi - lo)
    x0, y0 = np.clip(np.floor(lo - pad), 0, S - 1).astype(int)
    x1, y1 = np.clip(np.ceil(hi + pad), 0, S - 1).astype(int)
    return int(x0), int(y0), int(max(x1, x0)), int(max(y1, y0))


def lips_box_mask(landmarks: np.ndarray, pix: torch.Tensor, S: int) -> torch.Tensor:
    """1 for the pixels ``pix`` [P, 2] inside :func:`lips_box` (window side ``S``), else 0. [P]"""
    x0, y0, x1, y1 = lips_box(landmarks, S)
    x, y = pix[:, 0], pix[:, 1]
    return ((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).float()

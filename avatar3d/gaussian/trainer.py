"""The Gaussian field's trainer: optimisers, densification and one step of fitting.

:meth:`Trainer.train_step` draws a training frame, renders it with its tracked head pose as the
camera and its tracked blendshapes as the motion code (the blendshapes the audio prior does not
drive swapped in from another frame now and then), and returns the step's named loss terms
(weighted as FitParams says, plus ``total``) and its head-region PSNR. Everything the fit's
state holds goes into the checkpoint (:meth:`Trainer.state_dict`), so a resumed fit continues
bit for bit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from avatar3d import fsutil
from avatar3d.core.avatar import Conditioning, composite
from avatar3d.core.runs import RunPaths
from avatar3d.core.vocab import SPEECH_INDEX
from avatar3d.drive.metrics import psnr
from avatar3d.gaussian.avatar import AvatarSpec, GaussianAvatar
from avatar3d.gaussian.config import FitParams
from avatar3d.errors import UserError
from avatar3d.gaussian.data import FitData, load_fit_data  # noqa: F401  (the fit command's data loader)
from avatar3d.gaussian.gaussians import DensifyStrategy, make_optimizer
from avatar3d.gaussian.losses import (
    branch_loss, landmark_guidance, make_target, photometric_terms, shut_cover_loss,
)


def swap_other_channels(cond: Conditioning, other: torch.Tensor) -> Conditioning:
    """``cond`` with the blendshapes outside the prior's speech channels (``SPEECH_INDEX``) taken
    from ``other`` [52] (another frame's blendshapes)."""
    keep = torch.zeros(cond.motion.shape[-1], dtype=torch.bool, device=cond.motion.device)
    keep[list(SPEECH_INDEX)] = True
    return Conditioning(torch.where(keep, cond.motion, other), cond.audio)


@dataclass
class Trainer:
    """The optimisation state of one fit (all of it goes into the checkpoint)."""

    avatar: GaussianAvatar
    opt_face: torch.optim.Optimizer
    opt_mouth: torch.optim.Optimizer
    opt_net: torch.optim.Optimizer
    strategy: DensifyStrategy
    generator: torch.Generator
    extent: float
    step: int = 0

    @staticmethod
    def start(data: FitData, params: FitParams, device, paths: RunPaths) -> "Trainer":
        """A new fit: the avatar initialised from ``data`` with the fit's own generator (seeded
        from ``params.seed``); its spec is written to ``paths`` (what a resume rebuilds it from)."""
        from avatar3d.gaussian.init import init_avatar

        generator = torch.Generator().manual_seed(params.seed)
        avatar = init_avatar(data, params, generator).to(device)
        extent = float(torch.tensor(avatar.spec.box_max).sub(torch.tensor(avatar.spec.box_min)).norm() / 2)
        fsutil.write_json(paths.avatar_spec, avatar.spec.to_json())
        return Trainer.create(avatar, params, extent, generator, device)

    @staticmethod
    def resume(paths: RunPaths, params: FitParams, device) -> "Trainer":
        """The fit saved in ``paths`` (its avatar spec and last checkpoint); UserError when corrupt."""
        try:
            spec = AvatarSpec.from_json(json.loads(paths.avatar_spec.read_text()))
            state = torch.load(paths.checkpoint, map_location="cpu", weights_only=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise UserError(f"corrupt checkpoint in {paths.root}: {exc}") from None
        return Trainer.from_state(state, spec, params, device)

    def save_avatar(self, paths: RunPaths) -> None:
        """The fitted avatar into the run: avatar.json/avatar.pt and the canonical Gaussians as a
        standard 3DGS .ply."""
        from avatar3d.gaussian.ply import write_ply

        avatar = self.avatar.eval()
        avatar.save(paths.root)
        write_ply(paths.ply, avatar.face, avatar.mouth)

    def counts(self) -> dict[str, int]:
        """What the avatar is made of now: ``primitives`` (all Gaussians) and per branch."""
        nf, nm = self.avatar.num_gaussians()
        return {"primitives": nf + nm, "num_face": nf, "num_mouth": nm}

    def checkpoint(self, paths: RunPaths) -> None:
        """The whole optimisation state into ``paths.checkpoint`` (atomically)."""
        with fsutil.atomic_path(paths.checkpoint) as tmp:
            torch.save(self.state_dict(), tmp)

    @staticmethod
    def create(avatar: GaussianAvatar, params: FitParams, extent: float, generator: torch.Generator, device) -> "Trainer":
        lrs = {
            "means": params.lr_means * extent, "log_scales": params.lr_log_scales, "quats": params.lr_quats,
            "opacities": params.lr_opacities, "sh0": params.lr_sh0, "motion_basis": params.lr_motion_basis,
        }
        grid, mlp = avatar.face_deform.parameter_groups()
        opt_net = torch.optim.Adam(
            [{"params": grid, "lr": params.lr_grid, "name": "grid"}, {"params": mlp, "lr": params.lr_mlp, "name": "mlp"}],
            eps=1e-15,
        )
        strategy = DensifyStrategy(params.strategy, len(avatar.face), extent, device)
        return Trainer(
            avatar, make_optimizer(avatar.face, lrs), make_optimizer(avatar.mouth, lrs), opt_net, strategy,
            generator, extent,
        )

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "avatar": self.avatar.state_dict(),
            "opt_face": self.opt_face.state_dict(),
            "opt_mouth": self.opt_mouth.state_dict(),
            "opt_net": self.opt_net.state_dict(),
            "strategy": self.strategy.state.state_dict(),
            "generator": self.generator.get_state(),
            "extent": self.extent,
        }

    @staticmethod
    def from_state(state: dict, spec: AvatarSpec, params: FitParams, device) -> "Trainer":
        """A trainer continuing from a checkpoint's state (read onto the CPU: the generator's state
        must stay there whatever the device)."""
        avatar = GaussianAvatar.from_state(spec, state["avatar"], params.backend).to(device)
        generator = torch.Generator()
        generator.set_state(state["generator"].cpu())
        trainer = Trainer.create(avatar, params, float(state["extent"]), generator, device)
        trainer.opt_face.load_state_dict(state["opt_face"])
        trainer.opt_mouth.load_state_dict(state["opt_mouth"])
        trainer.opt_net.load_state_dict(state["opt_net"])
        trainer.strategy.load_state_dict({k: v.to(device) for k, v in state["strategy"].items()})
        trainer.step = int(state["step"])
        return trainer

    def set_lr(self, params: FitParams) -> None:
        """Exponential decay of the centres' learning rate (to 1% at the last step)."""
        frac = min(self.step / max(params.steps, 1), 1.0)
        lr = params.lr_means * self.extent * (0.01**frac)
        for opt in (self.opt_face, self.opt_mouth):
            for group in opt.param_groups:
                if group["name"] == "means":
                    group["lr"] = lr

    def train_step(self, data: FitData, params: FitParams, device) -> tuple[dict[str, float], float]:
        """One optimisation step on a random training frame (one of the first
        ``data.drawable(step)``); returns its named loss terms (weighted, and their ``total``)
        and its head-region PSNR."""
        self.set_lr(params)
        drawable = data.drawable(self.step)
        i = int(data.train[torch.randint(drawable, (1,), generator=self.generator)])
        target = make_target(data, i, params.dilate_px, device)
        cond = data.conditioning(i, params.audio_window, device)
        if params.swap_other_channels and float(torch.rand((), generator=self.generator)) < params.swap_other_channels:
            j = int(data.train[torch.randint(drawable, (1,), generator=self.generator)])
            cond = swap_other_channels(cond, data.motion[j].to(device))
        g, d = self.avatar.deformed(cond)
        out = self.avatar.draw(g, data.camera(i, device), mouth_share=True)
        DensifyStrategy.retain(out.means2d)
        rgb, mouth_alpha = out.rgb[..., :3], out.rgb[..., 3:]
        pred = composite(torch.cat([rgb, out.alpha], -1), target.background)
        photo = photometric_terms(pred, out.alpha, target, params)
        terms = {
            "l1": (1 - params.w_ssim) * photo["l1"],
            "dssim": params.w_ssim * photo["dssim"],
            "alpha": params.w_alpha * photo["alpha"],
        }
        if params.w_branches:
            terms["branches"] = params.w_branches * branch_loss(out.alpha - mouth_alpha, mouth_alpha, target)
        if params.w_deform:
            terms["deform"] = params.w_deform * (d.d_means**2).sum(-1).mean()
        if params.w_landmarks:
            terms["landmarks"] = params.w_landmarks * landmark_guidance(self.avatar, data, i, cond, device)
        if params.w_shut_cover and target.mouth_empty:
            terms["shut_cover"] = params.w_shut_cover * shut_cover_loss(
                self.avatar, data, i, cond, g, params, self.generator, device
            )
        loss = sum_in_order(terms.values())
        for opt in (self.opt_face, self.opt_mouth, self.opt_net):
            opt.zero_grad(set_to_none=True)
        loss.backward()
        nf = self.avatar.num_face()
        grad2d = out.grad2d()
        if grad2d is not None:
            S = data.window.size
            self.strategy.accumulate(grad2d[:nf], out.radii[:nf], S, S)
        for opt in (self.opt_face, self.opt_mouth, self.opt_net):
            opt.step()
        self.step += 1
        self.strategy.step(self.avatar.face, self.opt_face, self.step, self.generator)
        with torch.no_grad():
            p = psnr(pred.detach(), target.image, target.head)
        named = {k: float(v.detach()) for k, v in terms.items()}
        named["total"] = float(loss.detach())
        return named, float(p)


def sum_in_order(values) -> torch.Tensor:
    """``((v0 + v1) + v2) + ...``: the terms summed left to right (the order fixes the bits)."""
    it = iter(values)
    total = next(it)
    for v in it:
        total = total + v
    return total

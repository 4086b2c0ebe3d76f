"""Canonical 3D Gaussians and the densify/prune strategy that grows and trims them.

Every per-Gaussian attribute lives in one name-keyed ``nn.ParameterDict`` (first dimension = N),
so densification, pruning, checkpoints and export carry all of them without a list to keep in
sync. Stored (unconstrained) attributes:

    means       [N, 3]  head-space centres (cm)
    quats       [N, 4]  rotations, w x y z, not necessarily unit
    log_scales  [N, 3]  log standard deviations (cm)
    opacities   [N]     opacity logits
    sh0         [N, 3]  degree-0 spherical-harmonic colour: rgb = 0.5 + SH_C0 * sh0

A set may carry more attributes (the mouth branch adds its per-Gaussian motion basis); the
strategy copies, splits and prunes them like the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from avatar3d.gaussian.rasterize import quat_to_rotmat

SH_C0 = 0.28209479177387814


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


class Gaussians(nn.Module):
    """A set of Gaussians in canonical head space (see module docstring for the attributes)."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        n = params["means"].shape[0]
        for name, value in params.items():
            if value.shape[0] != n:
                raise ValueError(f"attribute {name} has {value.shape[0]} rows, means has {n}")
        self.params = nn.ParameterDict({k: nn.Parameter(v) for k, v in params.items()})

    @staticmethod
    def init(
        points: torch.Tensor,  # [N, 3]
        colors: torch.Tensor,  # [N, 3] in [0, 1]
        scale: torch.Tensor | float,  # [N] or scalar, initial std (cm)
        opacity: float = 0.1,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> "Gaussians":
        """Isotropic Gaussians at ``points`` with the given colours."""
        n = points.shape[0]
        dev = points.device
        scale = torch.as_tensor(scale, dtype=torch.float32, device=dev).expand(n)
        params = {
            "means": points.float().clone(),
            "quats": torch.tensor([1.0, 0, 0, 0], device=dev).repeat(n, 1),
            "log_scales": torch.log(scale)[:, None].repeat(1, 3),
            "opacities": torch.full((n,), math.log(opacity / (1 - opacity)), device=dev),
            "sh0": rgb_to_sh0(colors.float().clamp(0, 1)),
        }
        params.update(extra or {})
        return Gaussians(params)

    @staticmethod
    def empty_like_state(state: dict[str, torch.Tensor]) -> "Gaussians":
        """A set shaped like a saved state dict (``params.<name>`` keys), ready for load_state_dict."""
        prefix = "params."
        return Gaussians({k[len(prefix):]: torch.zeros_like(v) for k, v in state.items() if k.startswith(prefix)})

    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]  # [N, 3]

    @property
    def quats(self) -> torch.Tensor:
        return self.params["quats"]  # [N, 4]

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.params["log_scales"])  # [N, 3]

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.params["opacities"])  # [N]

    @property
    def colors(self) -> torch.Tensor:
        return (0.5 + SH_C0 * self.params["sh0"]).clamp(min=0.0)  # [N, 3]


# ---------------------------------------------------------------------------------------------
# Operations on a parameter dict and its optimizer state (one place, used by the strategy).


def _replace_rows(
    gaussians: Gaussians,
    optimizer: torch.optim.Optimizer,
    param_fn,  # (name, tensor [N, ...]) -> tensor [M, ...]
    state_fn,  # (name, state tensor [N, ...]) -> tensor [M, ...]
) -> None:
    """Rebuild every attribute (and its Adam moments) with new rows, keeping names and groups."""
    for group in optimizer.param_groups:
        name = group["name"]
        if name not in gaussians.params:
            continue
        old = group["params"][0]
        new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {
                k: (state_fn(name, v) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == old.shape[0] else v)
                for k, v in state.items()
            }
        group["params"] = [new]
        gaussians.params[name] = new
    for name, value in list(gaussians.params.items()):  # attributes not in the optimizer (frozen)
        if all(group["name"] != name for group in optimizer.param_groups):
            gaussians.params[name] = nn.Parameter(param_fn(name, value.detach()), requires_grad=value.requires_grad)


def remove(gaussians: Gaussians, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> None:
    """Drop the Gaussians where ``mask`` [N] is True."""
    keep = ~mask
    _replace_rows(gaussians, optimizer, lambda n, p: p[keep], lambda n, s: s[keep])


def duplicate(gaussians: Gaussians, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> None:
    """Append a copy of the Gaussians where ``mask`` is True (fresh Adam moments for the copies)."""
    idx = mask.nonzero().squeeze(1)
    _replace_rows(
        gaussians, optimizer,
        lambda n, p: torch.cat([p, p[idx]]),
        lambda n, s: torch.cat([s, torch.zeros_like(s[idx])]),
    )


def split(
    gaussians: Gaussians, optimizer: torch.optim.Optimizer, mask: torch.Tensor, generator: torch.Generator
) -> None:
    """Replace each selected Gaussian by two smaller ones sampled inside it (scales / 1.6)."""
    idx = mask.nonzero().squeeze(1)
    keep = ~mask
    scales = gaussians.scales[idx].detach()  # [S, 3]
    R = quat_to_rotmat(gaussians.quats[idx].detach())  # [S, 3, 3]
    # drawn where the generator lives (a fit's generator stays on the CPU, its Gaussians may be on
    # CUDA), then moved: the same numbers on every device
    noise = torch.randn((2, len(idx), 3), generator=generator, device=generator.device).to(scales.device)
    offsets = torch.einsum("sij,ksj->ksi", R, noise * scales)  # [2, S, 3]

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "means":
            new = (p[idx][None] + offsets).reshape(-1, 3)
        elif name == "log_scales":
            new = (p[idx] - math.log(1.6)).repeat(2, 1)
        else:
            new = p[idx].repeat((2,) + (1,) * (p.dim() - 1))
        return torch.cat([p[keep], new])

    _replace_rows(
        gaussians, optimizer, param_fn,
        lambda n, s: torch.cat([s[keep], torch.zeros_like(s[idx]).repeat((2,) + (1,) * (s.dim() - 1))]),
    )


def reset_opacity(gaussians: Gaussians, optimizer: torch.optim.Optimizer, value: float) -> None:
    """Clamp every opacity to at most ``value`` and zero its Adam moments."""
    logit = math.log(value / (1 - value))
    _replace_rows(
        gaussians, optimizer,
        lambda n, p: p.clamp(max=logit) if n == "opacities" else p,
        lambda n, s: torch.zeros_like(s) if n == "opacities" else s,
    )


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyConfig:
    """When and how Gaussians are added and removed during fit (3DGS-style)."""

    refine_start: int = 200
    """First step at which Gaussians are densified/pruned."""
    refine_stop: int = 4000
    """No densification after this step (pruning of transparent Gaussians continues)."""
    refine_every: int = 100
    """Steps between two refinements."""
    reset_every: int = 1500
    """Steps between opacity resets (0: never)."""
    grad_threshold: float = 0.0004
    """Mean image-space gradient norm (per unit of image half-size) above which a Gaussian grows."""
    split_scale: float = 0.01
    """Gaussians larger than this fraction of the scene extent are split, smaller ones cloned."""
    prune_opacity: float = 0.005
    """Gaussians below this opacity are removed."""
    reset_opacity: float = 0.01
    """Opacities are clamped to this value at a reset."""
    prune_scale: float = 0.1
    """Gaussians larger than this fraction of the scene extent are removed (after a reset)."""
    max_gaussians: int = 200_000
    """No densification beyond this many Gaussians."""


@dataclass
class StrategyState:
    """Running statistics since the last refinement (rows follow the Gaussians)."""

    grad2d: torch.Tensor  # [N] summed norms of the image-space mean gradients
    count: torch.Tensor  # [N] number of views in which each Gaussian was visible

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"grad2d": self.grad2d, "count": self.count}


class DensifyStrategy:
    """Densify by image-space gradient, prune by opacity/size, reset opacities periodically.

    Use: ``retain(result)`` before backward, ``step(...)`` after backward and before
    ``optimizer.step()`` is fine too. The statistics live in ``self.state`` (checkpointed).
    """

    def __init__(self, config: StrategyConfig, num_gaussians: int, scene_extent: float, device):
        self.config = config
        self.scene_extent = float(scene_extent)
        self.state = StrategyState(
            torch.zeros(num_gaussians, device=device), torch.zeros(num_gaussians, device=device)
        )

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = StrategyState(state["grad2d"], state["count"])

    @staticmethod
    def retain(means2d: torch.Tensor) -> None:
        """Keep the gradient of the projected means (call before backward)."""
        if means2d.requires_grad:
            means2d.retain_grad()

    @torch.no_grad()
    def accumulate(self, grad2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        """Add one view's image-space gradients: ``grad2d`` [N, 2] (the .grad of the projected
        means, see :meth:`retain`) and ``radii`` [N] (0 = not visible)."""
        g = grad2d.clone()
        g[:, 0] *= 0.5 * width
        g[:, 1] *= 0.5 * height
        visible = radii > 0
        self.state.grad2d += g.norm(dim=-1) * visible
        self.state.count += visible.float()

    @torch.no_grad()
    def step(
        self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, step: int, generator: torch.Generator
    ) -> dict[str, int]:
        """Refine at the scheduled steps; returns what was done (counts)."""
        cfg = self.config
        done = {"cloned": 0, "split": 0, "pruned": 0}
        if step < cfg.refine_start or step % cfg.refine_every != 0:
            return done
        grads = self.state.grad2d / self.state.count.clamp(min=1)
        big = gaussians.scales.max(-1).values > cfg.split_scale * self.scene_extent
        if step <= cfg.refine_stop and len(gaussians) < cfg.max_gaussians:
            grow = grads > cfg.grad_threshold
            budget = cfg.max_gaussians - len(gaussians)
            if int(grow.sum()) > budget:  # keep the largest gradients
                top = torch.topk(torch.where(grow, grads, torch.zeros_like(grads)), budget).indices
                grow = torch.zeros_like(grow)
                grow[top] = True
            clone, splitting = grow & ~big, grow & big
            done["cloned"], done["split"] = int(clone.sum()), int(splitting.sum())
            duplicate(gaussians, optimizer, clone)
            splitting = torch.cat([splitting, torch.zeros(int(clone.sum()), dtype=torch.bool, device=clone.device)])
            split(gaussians, optimizer, splitting, generator)
        prune = gaussians.opacities < cfg.prune_opacity
        if cfg.reset_every and step > cfg.reset_every:
            prune |= gaussians.scales.max(-1).values > cfg.prune_scale * self.scene_extent
        if bool(prune.all()):  # never remove everything
            prune[torch.argmax(gaussians.opacities)] = False
        done["pruned"] = int(prune.sum())
        remove(gaussians, optimizer, prune)
        if cfg.reset_every and step % cfg.reset_every == 0 and step <= cfg.refine_stop:
            reset_opacity(gaussians, optimizer, cfg.reset_opacity)
        n = len(gaussians)
        dev = gaussians.means.device
        self.state = StrategyState(torch.zeros(n, device=dev), torch.zeros(n, device=dev))
        return done


def make_optimizer(gaussians: Gaussians, lrs: dict[str, float]) -> torch.optim.Adam:
    """One Adam with a named param group per attribute (learning rate from ``lrs``, default 1e-3)."""
    groups = [
        {"params": [p], "name": name, "lr": lrs.get(name, 1e-3)}
        for name, p in gaussians.params.items()
        if p.requires_grad
    ]
    return torch.optim.Adam(groups, eps=1e-15)

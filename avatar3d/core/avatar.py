"""The avatar interface every field implements, and :func:`load_avatar`, the one way to open one.

::

    avatar = load_avatar(run_dir, device)                      # options (rasterizer, ...) fixed here
    rgba = avatar.render(Conditioning(motion, audio), camera)  # [H, W, 4], colour premultiplied
    frame = composite(rgba, background)                         # [H, W, 3]

The per-frame conditioning is a motion code (the 52 mediapipe blendshapes of
:data:`avatar3d.core.vocab.BLENDSHAPE_NAMES`: tracked during fit, predicted by the audio prior or
set by sliders at inference) and, for avatars fitted with audio features, a window of audio
features around the frame. Fit's val, render, eval and the viewer draw through this interface
only; nothing outside a field's own folder touches its internals.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from avatar3d.errors import UserError

# field name (config.json's fit.field) -> (module, class with a ``load(run, device, **options)``)
FIELDS: dict[str, tuple[str, str]] = {
    "gaussian": ("avatar3d.gaussian.avatar", "GaussianAvatar"),
    "nerf": ("avatar3d.nerf.avatar", "NerfAvatar"),
}


@dataclass(frozen=True)
class Conditioning:
    """What drives the avatar for a batch of frames."""

    motion: torch.Tensor  # [B, M] motion code (blendshapes in BLENDSHAPE_NAMES order)
    audio: torch.Tensor | None = None  # [B, W, A] audio-feature window, or None

    def __post_init__(self):
        if self.motion.dim() != 2:
            raise ValueError(f"motion must be [B, M], got {list(self.motion.shape)}")
        if self.audio is not None and (self.audio.dim() != 3 or self.audio.shape[0] != self.motion.shape[0]):
            raise ValueError(f"audio must be [B, W, A] with B = {self.motion.shape[0]}, got {list(self.audio.shape)}")

    def to(self, device) -> "Conditioning":
        return Conditioning(self.motion.to(device), None if self.audio is None else self.audio.to(device))


@runtime_checkable
class Avatar(Protocol):
    """What every field's avatar offers (see module docstring)."""

    audio_features: str
    """Name of the audio features (dataset features/<name>.npy) it listens to; "" = motion only."""
    audio_window: int
    """Audio frames around each video frame it reads (0 when it reads none)."""

    def render(self, cond: "Conditioning", camera) -> torch.Tensor:
        """RGBA of the head for one frame (``cond`` of batch 1, a
        :class:`avatar3d.core.camera.Camera`): [H, W, 4], colour premultiplied by alpha."""
        ...

    def save(self, folder: Path) -> None:
        """Write the avatar's spec and weights into ``folder`` (atomically each)."""
        ...


def write_avatar(folder: Path, spec: dict, state: dict) -> None:
    """A field's ``save``: avatar.json (its spec) and avatar.pt (its weights) into a run folder,
    atomically each."""
    from avatar3d.core.runs import RunPaths
    from avatar3d.fsutil import atomic_path, write_json

    paths = RunPaths(Path(folder))
    write_json(paths.avatar_spec, spec)
    with atomic_path(paths.avatar_weights) as tmp:
        torch.save(state, tmp)


def composite(rgba: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Head over a background. rgba [H, W, 4] (premultiplied colour), background [H, W, 3] -> [H, W, 3]"""
    return rgba[..., :3] + (1.0 - rgba[..., 3:]) * background


def field_class(field: str):
    """The avatar class of a field name (UserError for an unknown one)."""
    if field not in FIELDS:
        raise UserError(f"unknown field {field!r}: this avatar3d draws {sorted(FIELDS)}")
    module, name = FIELDS[field]
    return getattr(importlib.import_module(module), name)


def load_avatar(run: Path, device: torch.device | str = "cpu", **options) -> Avatar:
    """Open the avatar of a fitted RUN folder on ``device``, in eval mode. The field comes from
    the run's config.json; ``options`` are the field's load-time options (the Gaussian field's
    ``backend``). UserError (one line) for a run that is missing, unfinished or corrupt."""
    from avatar3d.core.runs import open_run

    info = open_run(run)
    return field_class(info.field).load(info.run, device, **options).eval()

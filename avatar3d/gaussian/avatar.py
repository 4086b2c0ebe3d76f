"""The avatar: canonical Gaussians (face + inside of the mouth) and their deformation fields.

One :class:`Avatar`, loaded from a RUN folder with :meth:`Avatar.load`, and one
:meth:`Avatar.render` used by fit, render, view and eval::

    avatar = Avatar.load(run_dir, device)
    rgba = avatar.render(Conditioning(motion, audio), camera)  # [H, W, 4]
    frame = composite(rgba, background)                         # [H, W, 3]

The per-frame conditioning is a motion code (the 52 mediapipe blendshapes: tracked during fit,
predicted by the audio prior or set by sliders at inference) and, for avatars fitted with audio
features, a window of audio features around the frame.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar3d.core.dataset import BLENDSHAPE_NAMES
from avatar3d.gaussian.deform import DeformConfig, Deformation, FaceDeformer, MouthDeformer
from avatar3d.errors import UserError
from avatar3d.gaussian.gaussians import Gaussians
from avatar3d.gaussian.rasterize import Backend, Camera, RasterResult, rasterize_full

MOTION_DIM = len(BLENDSHAPE_NAMES)  # 52
AVATAR_FILE = "avatar.pt"
AVATAR_CONFIG_FILE = "avatar.json"


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


@dataclass(frozen=True)
class AvatarSpec:
    """Everything needed to rebuild an avatar's modules before loading its weights (avatar.json)."""

    deform: DeformConfig = field(default_factory=DeformConfig)
    box_min: tuple[float, float, float] = (-10.0, -10.0, -10.0)
    box_max: tuple[float, float, float] = (10.0, 10.0, 10.0)
    audio_features: str = ""
    """Name of the audio features (features/<name>.npy) the avatar listens to; "" = motion only."""
    audio_window: int = 0
    audio_dim: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(obj: dict) -> "AvatarSpec":
        obj = dict(obj)
        obj["deform"] = DeformConfig(**obj["deform"])
        obj["box_min"] = tuple(obj["box_min"])
        obj["box_max"] = tuple(obj["box_max"])
        return AvatarSpec(**obj)


def composite(rgba: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Head over a background. rgba [H, W, 4] (premultiplied colour), background [H, W, 3] -> [H, W, 3]"""
    return rgba[..., :3] + (1.0 - rgba[..., 3:]) * background


class Avatar(nn.Module):
    """Face and mouth Gaussians with their deformers (see module docstring)."""

    def __init__(self, spec: AvatarSpec, face: Gaussians, mouth: Gaussians):
        super().__init__()
        self.spec = spec
        self.face = face
        self.mouth = mouth
        audio_shape = (spec.audio_window, spec.audio_dim) if spec.audio_features else None
        self.face_deform = FaceDeformer(
            spec.deform, MOTION_DIM, audio_shape, torch.tensor(spec.box_min), torch.tensor(spec.box_max)
        )
        self.mouth_deform = MouthDeformer()

    # -- drawing -----------------------------------------------------------------------------

    def deformed(self, cond: Conditioning) -> tuple[dict[str, torch.Tensor], Deformation]:
        """Activated attributes of all Gaussians (face then mouth) for the one frame of ``cond``,
        and the face deformation that produced them."""
        if cond.motion.shape[0] != 1:
            raise ValueError("render one frame at a time (conditioning batch of 1)")
        face, mouth = self.face, self.mouth
        d = self.face_deform(face.means, cond.motion, cond.audio)
        mouth_dx = self.mouth_deform(mouth.params["motion_basis"], cond.motion)  # [1, Nm, 3]
        means = torch.cat([face.means + d.d_means[0], mouth.means + mouth_dx[0]])
        quats = torch.cat([face.quats + d.d_quats[0], mouth.quats])
        log_scales = torch.cat([face.params["log_scales"] + d.d_log_scales[0], mouth.params["log_scales"]])
        attrs = {
            "means": means,  # [N, 3]
            "quats": quats,  # [N, 4]
            "scales": torch.exp(log_scales),  # [N, 3]
            "opacities": torch.cat([face.opacities, mouth.opacities]),  # [N]
            "colors": torch.cat([face.colors, mouth.colors]),  # [N, 3]
        }
        return attrs, d

    def is_mouth(self, like: torch.Tensor) -> torch.Tensor:
        """1 for the mouth-branch Gaussians, 0 for the face's, as a colour channel (dtype and
        device of ``like``). [N, 1]"""
        flags = torch.zeros(len(self.face) + len(self.mouth), 1, device=like.device, dtype=like.dtype)
        flags[len(self.face):] = 1.0
        return flags

    def draw(
        self, g: dict[str, torch.Tensor], camera: Camera, backend: Backend = "auto", mouth_share: bool = False
    ) -> RasterResult:
        """Rasterize attributes ``g`` from :meth:`deformed`, keeping the projected means (face
        Gaussians first, for densification).

        With ``mouth_share`` the result's ``rgb`` has a 4th channel: the part of each pixel's alpha
        that the mouth-branch Gaussians contribute (the face branch's part is ``alpha`` minus it),
        rendered in the same pass as an extra colour channel. [H, W, 4]
        """
        colors = g["colors"]
        if mouth_share:
            colors = torch.cat([colors, self.is_mouth(colors)], dim=-1)
        return rasterize_full(
            g["means"], g["quats"], g["scales"], g["opacities"], colors,
            camera.K, camera.viewmat, camera.width, camera.height, backend=backend,
        )

    def render_full(
        self, cond: Conditioning, camera: Camera, backend: Backend = "auto", mouth_share: bool = False
    ) -> tuple[RasterResult, Deformation]:
        """Render one frame (:meth:`draw`), keeping the face deformation (for its regulariser)."""
        g, d = self.deformed(cond)
        return self.draw(g, camera, backend, mouth_share), d

    def render(self, cond: Conditioning, camera: Camera, backend: Backend = "auto") -> torch.Tensor:
        """RGBA of the head for one frame: [H, W, 4], colour premultiplied by alpha."""
        out, _ = self.render_full(cond, camera, backend)
        return torch.cat([out.rgb, out.alpha], dim=-1)

    # -- files -------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write avatar.json (spec) and avatar.pt (weights) into ``folder`` (atomically each)."""
        from avatar3d.fsutil import atomic_path, write_json

        write_json(Path(folder) / AVATAR_CONFIG_FILE, self.spec.to_json())
        with atomic_path(Path(folder) / AVATAR_FILE) as tmp:
            torch.save(self.state_dict(), tmp)

    @staticmethod
    def from_state(spec: AvatarSpec, state: dict[str, torch.Tensor]) -> "Avatar":
        """Rebuild an avatar from its spec and a state dict (Gaussian counts taken from the state)."""
        face = Gaussians.empty_like_state({k[len("face."):]: v for k, v in state.items() if k.startswith("face.")})
        mouth = Gaussians.empty_like_state({k[len("mouth."):]: v for k, v in state.items() if k.startswith("mouth.")})
        avatar = Avatar(spec, face, mouth)
        defaults = avatar.state_dict()
        # runs fitted before the code was clamped to its training range stay unclamped
        unclamped = {k: defaults[k] for k in ("face_deform.motion_lo", "face_deform.motion_hi")}
        avatar.load_state_dict({**unclamped, **state})
        return avatar

    @staticmethod
    def load(run_dir: Path, device: torch.device | str = "cpu") -> "Avatar":
        """Load a fitted avatar from a RUN folder (safe loaders only: JSON and weights-only torch)."""
        run_dir = Path(run_dir)
        spec_path, weights = run_dir / AVATAR_CONFIG_FILE, run_dir / AVATAR_FILE
        if not spec_path.is_file() or not weights.is_file():
            raise UserError(f"not a fitted avatar run (no {AVATAR_CONFIG_FILE}/{AVATAR_FILE}): {run_dir}")
        try:
            spec = AvatarSpec.from_json(json.loads(spec_path.read_text()))
            state = torch.load(weights, map_location=device, weights_only=True)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise UserError(f"corrupt avatar in {run_dir}: {exc}") from None
        try:
            return Avatar.from_state(spec, state).to(device)
        except RuntimeError as exc:  # load_state_dict: keys or shapes of another avatar3d version
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"the avatar in {run_dir} does not fit this version of avatar3d ({first[:120]}): "
                "run `avatar3d fit` again"
            ) from None

    def num_gaussians(self) -> tuple[int, int]:
        return len(self.face), len(self.mouth)


def downsample(image: torch.Tensor, size: int) -> torch.Tensor:
    """Area-style resampling of [H, W, C] to [size, size, C] (antialiased bilinear)."""
    x = image.permute(2, 0, 1)[None].float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0)

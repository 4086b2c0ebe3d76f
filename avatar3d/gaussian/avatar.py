"""The Gaussian field's avatar: canonical Gaussians (face + inside of the mouth) and their
deformation fields, drawn with the rasterizer chosen when it is built or loaded.

:class:`GaussianAvatar` implements :class:`avatar3d.core.avatar.Avatar`; open a fitted one with
:func:`avatar3d.core.avatar.load_avatar`. The trainer (:mod:`avatar3d.gaussian.trainer`) uses the
parts below ``render``: :meth:`GaussianAvatar.deformed` (attributes of one frame) and
:meth:`GaussianAvatar.draw` (rasterize them, optionally with the mouth branch's alpha share).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from avatar3d.core.audio_window import renamed_state
from avatar3d.core.avatar import Conditioning, write_avatar
from avatar3d.core.camera import Camera
from avatar3d.core.runs import RunPaths
from avatar3d.errors import UserError
from avatar3d.core.motion import MotionStats
from avatar3d.gaussian.deform import DeformConfig, Deformation, FaceDeformer, MouthDeformer
from avatar3d.gaussian.gaussians import Gaussians
from avatar3d.gaussian.rasterize import Backend, RasterResult, rasterize_full


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


class GaussianAvatar(nn.Module):
    """Face and mouth Gaussians with their deformers (see module docstring).

    ``motion_stats`` (standardisation and clamp range of the motion code, from the training
    frames) and ``lower_face_y`` (canonical y of the base of the nose: below it only the speech
    channels act) shape what the face field reads; ``backend`` is the rasterizer every draw uses.
    ``face_deform``, when given, replaces the face field (a baked one:
    :class:`avatar3d.gaussian.bake.BakedFaceDeformer`; the statistics are then unused).
    """

    def __init__(
        self, spec: AvatarSpec, face: Gaussians, mouth: Gaussians, motion_stats: MotionStats, lower_face_y: float,
        backend: Backend = "auto", face_deform: nn.Module | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.face = face
        self.mouth = mouth
        self.backend: Backend = backend
        audio_shape = (spec.audio_window, spec.audio_dim) if spec.audio_features else None
        self.face_deform = face_deform if face_deform is not None else FaceDeformer(
            spec.deform, audio_shape, torch.tensor(spec.box_min), torch.tensor(spec.box_max), motion_stats,
            lower_face_y,
        )
        self.mouth_deform = MouthDeformer()

    @property
    def audio_features(self) -> str:
        return self.spec.audio_features

    @property
    def audio_window(self) -> int:
        return self.spec.audio_window

    def num_face(self) -> int:
        """Face-branch Gaussians come first in every attribute tensor of :meth:`deformed`."""
        return len(self.face)

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

    def draw(self, g: dict[str, torch.Tensor], camera: Camera, mouth_share: bool = False) -> RasterResult:
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
            camera.K, camera.viewmat, camera.width, camera.height, backend=self.backend,
        )

    def render(self, cond: Conditioning, camera: Camera) -> torch.Tensor:
        """RGBA of the head for one frame: [H, W, 4], colour premultiplied by alpha."""
        g, _ = self.deformed(cond)
        out = self.draw(g, camera)
        return torch.cat([out.rgb, out.alpha], dim=-1)

    # -- files -------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write avatar.json (spec) and avatar.pt (weights) into ``folder`` (atomically each)."""
        write_avatar(folder, self.spec.to_json(), self.state_dict())

    @staticmethod
    def from_state(spec: AvatarSpec, state: dict[str, torch.Tensor], backend: Backend = "auto") -> "GaussianAvatar":
        """Rebuild an avatar from its spec and a state dict (Gaussian counts, motion statistics and
        the lower face's edge taken from the state; runs fitted before the code was clamped to its
        training range stay unclamped)."""
        state = renamed_state(state, "face_deform.")
        face = Gaussians.empty_like_state({k[len("face."):]: v for k, v in state.items() if k.startswith("face.")})
        mouth = Gaussians.empty_like_state({k[len("mouth."):]: v for k, v in state.items() if k.startswith("mouth.")})
        stats = MotionStats.from_state(state, "face_deform.")
        avatar = GaussianAvatar(spec, face, mouth, stats, float(state["face_deform.lower_face_y"]), backend)
        defaults = avatar.state_dict()
        unclamped = {k: defaults[k] for k in ("face_deform.motion_lo", "face_deform.motion_hi") if k not in state}
        avatar.load_state_dict({**unclamped, **state})
        return avatar

    @staticmethod
    def load(run_dir: Path, device: torch.device | str = "cpu", backend: Backend = "auto") -> "GaussianAvatar":
        """Load a fitted avatar from a RUN folder (safe loaders only: JSON and weights-only torch),
        drawing with ``backend``."""
        paths = RunPaths(Path(run_dir))
        run_dir, spec_path, weights = paths.root, paths.avatar_spec, paths.avatar_weights
        if not spec_path.is_file() or not weights.is_file():
            raise UserError(f"not a fitted avatar run (no {spec_path.name}/{weights.name}): {run_dir}")
        try:
            spec = AvatarSpec.from_json(json.loads(spec_path.read_text()))
            state = torch.load(weights, map_location=device, weights_only=True)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise UserError(f"corrupt avatar in {run_dir}: {exc}") from None
        try:
            return GaussianAvatar.from_state(spec, state, backend).to(device)
        except (RuntimeError, KeyError) as exc:  # load_state_dict: keys or shapes of another avatar3d version
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"the avatar in {run_dir} does not fit this version of avatar3d ({first[:120]}): "
                "run `avatar3d fit` again"
            ) from None

    def num_gaussians(self) -> tuple[int, int]:
        return len(self.face), len(self.mouth)

"""The Gaussian field's hyper-parameters (:class:`FitParams`) and its presets, defined here once.

``avatar3d fit DATA -o RUN --preset tiny --params.steps 300`` starts from a preset and overrides
any field on the command line; ``--preset FILE.json`` reads a JSON object of FitParams fields
(fields left out keep the ``default`` preset's values), or a run's config.json (its ``params``).

The window: ``tiny`` (128²) and ``small`` (256²) fit a square window around the head (the union of
the head masks over the clip, plus a margin) resampled to ``image_size``; ``default`` fits the
whole frame at the dataset's resolution.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from avatar3d.core.config import dataclass_from_json
from avatar3d.errors import UserError
from avatar3d.gaussian.deform import DeformConfig
from avatar3d.gaussian.gaussians import StrategyConfig
from avatar3d.gaussian.rasterize import Backend
from avatar3d.nerf.config import NerfConfig


@dataclass(frozen=True)
class FitParams:
    """Hyper-parameters of a fit (a preset). Copy configs/fit_<preset>.json to change them."""

    steps: int = 12_000
    """Optimisation steps (one training frame per step)."""
    window: Literal["head", "full"] = "full"
    """Fit a square window around the head ("head") or the whole frame ("full")."""
    image_size: int = 0
    """Side of the fitted images in pixels; 0 = the dataset's frame size."""
    head_margin: float = 0.05
    """Margin around the union of the drawn regions for window="head" (fraction of its side)."""
    neck_margin: float = 0.15
    """The avatar draws the neck too, down to this far below the lowest the chin goes in the
    training frames (in units of the base of the nose to the top of the forehead; 0 = the head
    only). Drawn, the neck follows the rendered jaw: no seam or second chin where new audio moves
    the chin away from the frame's own (BENCHMARKS.md, seams)."""
    num_face: int = 20_000
    """Initial number of face Gaussians (landmark-seeded + carved from the head box)."""
    num_mouth: int = 2_000
    """Number of inside-of-the-mouth Gaussians."""
    init_opacity: float = 0.3
    """Initial opacity of the Gaussians."""
    lr_means: float = 2e-4
    """Learning rate of the Gaussian centres, times the head extent (cm); decays 100x over the fit."""
    lr_log_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 5e-3
    lr_motion_basis: float = 1e-2
    lr_grid: float = 1e-2
    """Learning rate of the hash-grid embeddings."""
    lr_mlp: float = 2e-3
    """Learning rate of the deformation MLPs."""
    w_ssim: float = 0.2
    """Weight of D-SSIM in the photometric loss (the rest is L1)."""
    w_mouth: float = 2.0
    """Extra loss weight on inside-of-the-mouth pixels (on top of the head-region weight 1)."""
    w_alpha: float = 0.05
    """Weight of the alpha term: head alpha should be 1 on the head mask and 0 off it."""
    w_deform: float = 1e-3
    """Weight of the penalty on the size of the face deformation (keeps the canonical head useful)."""
    w_branches: float = 0.2
    """Weight of the branch decomposition: inside the mouth mask the face branch's share of alpha
    should be 0, outside it (in the head region) the mouth branch's share should be 0, so teeth
    and tongue are drawn by the mouth branch and lips and skin by the face branch."""
    swap_other_channels: float = 0.5
    """Probability per step that the blendshapes the audio prior does not drive (eyes, brows,
    nose: all but ``avatar3d.core.vocab.SPEECH_CHANNELS``) come from another random training
    frame. At render time they do (the pose trajectory's frames), so the field must not learn to
    read the mouth's shape from them (BENCHMARKS.md, fit)."""
    w_landmarks: float = 1.0
    """Weight of the lip-landmark guidance: the face deformation field, evaluated at the canonical
    lip landmarks, must carry them onto the frame's tracked 2D ones (Charbonnier distance as a
    fraction of the window side). It tells the lips where to go, so they close over the inside
    of the mouth when the tracker says the mouth is shut."""
    w_shut_cover: float = 1.0
    """Weight of the shut-lip cover: on training frames whose mouth mask is empty, the mouth
    branch's share of alpha over a box around the lips, seen from the frame's head pose turned
    by up to ``shut_jitter_deg`` in pitch and yaw, mean squared (:func:`shut_cover_loss`). Only
    the face branch gets its gradient, so the lips close over the mouth branch from poses near
    the pauses' ones too while the mouth branch stays behind them as it was trained (without
    it a head pitched a few degrees from the pauses' poses parted shut lips: BENCHMARKS.md,
    render and eval)."""
    shut_jitter_deg: float = 3.0
    """Largest pitch/yaw turn of the head for the shut-lip cover (degrees)."""
    dilate_px: int = 5
    """Dilation of the head mask for the loss region, in pixels of the fitted image."""
    audio_features: str = ""
    """Audio features (features/<name>.npy) to condition on besides the motion code; "" = none."""
    audio_window: int = 8
    """Audio frames around each video frame given to the deformation field."""
    deform: DeformConfig = field(default_factory=DeformConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    nerf: NerfConfig = field(default_factory=NerfConfig)
    """The NeRF field's own (``--field nerf``; the Gaussian-only fields above are unused there)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints."""
    log_every: int = 25
    """Steps between progress-bar updates and rows of RUN/losses.jsonl."""
    val_every: int = 0
    """Steps between measurements of the val frames' head PSNR during the fit (on up to 8 of
    them, logged in RUN/losses.jsonl as val_psnr_head); 0 = only at the end."""
    prior_finetune_steps: int = 300
    """Steps fine-tuning the shipped audio-to-motion prior on this identity's train split
    (written to RUN/prior.pt, used by render/eval); 0 = keep the generic prior."""
    prior_closure_weight: float = 0.0
    """Extra loss weight of the clip's /p b m/ frames in that fine-tuning (phones aligned on its
    audio: English clips only); 0 = off. 4 gave a few more closures on the CNN clip (BENCHMARKS.md,
    articulation)."""
    prior_voice_match: float = 1.0
    """Share of the way a driving voice's mean spectrum is moved to this identity's own before the
    fine-tuned prior reads it (a running mean, the same live and offline); 0 = off. It opened the
    vowels a radio voice had pressed shut (BENCHMARKS.md, articulation, lever 4)."""
    prior_contrast: float = 1.0
    """Syllable contrast of the fine-tuned prior toward rest: a frame moving toward the rest pose
    moves this many times its distance from the mean of the last 200 ms (causal: no latency;
    silence stays at rest); 0 = off. More closures between syllables on new voices (BENCHMARKS.md,
    articulation, levers 5 and 6)."""
    prior_contrast_away: float = 0.0
    """The same contrast for frames moving away from rest (the peaks: open vowels); 0 = off. At 1
    (lever 5) the open vowels overshot the person's and the jaw jittered more, for no more closures
    (BENCHMARKS.md, articulation, lever 6)."""
    seed: int = 0
    """Seed of this fit's random generator (frame order, initialisation, splits)."""
    backend: Backend = "auto"
    """Rasterizer: gsplat on CUDA when installed, else the dense PyTorch one."""
    frame_store: Literal["auto", "raw", "jpeg"] = "auto"
    """How the training frames are held in host RAM: raw uint8, or JPEG decoded per step and
    streamed from the dataset while training starts (avatar3d.gaussian.data); auto = raw when
    the raw frames fit ``raw_frames_max_gb``."""
    raw_frames_max_gb: float = 2.0
    """Largest raw size of the training frames that frame_store auto keeps raw (GB)."""
    stream_first_frames: int = 250
    """With streamed (JPEG) frames: training frames decoded before the first step."""
    stream_all_by: float = 0.1
    """With streamed (JPEG) frames: the fraction of the steps after which every training frame
    may be drawn (the drawable prefix grows linearly until then)."""

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, FitParams] = {
    "default": FitParams(),
    "tiny": FitParams(
        steps=1200,
        window="head",
        image_size=128,
        num_face=2500,
        num_mouth=750,  # draws the whole inside of the mouth (not densified); see BENCHMARKS (branch band)
        lr_means=5e-4,
        deform=DeformConfig(num_levels=6, log2_table_size=13, max_resolution=256, hidden=48, cond_dim=24),
        strategy=StrategyConfig(
            refine_start=300, refine_stop=900, refine_every=100, reset_every=0, grad_threshold=0.0003,
            split_scale=0.02, max_gaussians=5000,
        ),
        checkpoint_every=200,
        prior_finetune_steps=60,
        nerf=NerfConfig(
            num_levels=8, features_per_level=2, log2_table_size=12, base_resolution=16, max_resolution=256,
            hidden=32, geo_dim=8, cond_dim=16, samples_per_ray=32, rays_per_step=1024,
            occupancy_resolution=32, occupancy_every=50, occupancy_warmup=150,
        ),
    ),
}
# tiny at 256² and twice the steps: the CPU preset for a real clip whose shut mouth matters (at
# 128² a shut lip line is under a pixel; BENCHMARKS.md, render and eval, has what each renders).
PRESETS["small"] = replace(
    PRESETS["tiny"],
    steps=2400,
    image_size=256,
    strategy=replace(PRESETS["tiny"].strategy, refine_stop=1800),
    checkpoint_every=400,
)
# The demo's preset: tiny at half the steps, so `make demo` ends within minutes on 2 CPU cores.
PRESETS["demo"] = replace(
    PRESETS["tiny"],
    steps=600,
    strategy=replace(PRESETS["tiny"].strategy, refine_start=150, refine_stop=450, refine_every=50),
    checkpoint_every=100,
)



def params_from_json(obj: dict, where: str = "fit params") -> FitParams:
    """FitParams from a JSON object (strict: unknown or mistyped keys are a UserError)."""
    return dataclass_from_json(FitParams, obj, where)


def resolve_preset(preset: str) -> FitParams:
    """A preset name (tiny, small, demo, default), or the path of a JSON file: FitParams fields
    (left-out ones keep the default preset's values) or a run's config.json (its ``params``)."""
    if preset in PRESETS:
        return PRESETS[preset]
    path = Path(preset)
    if not path.is_file():
        raise UserError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)} or the path of a JSON file")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read preset {path}: {exc}") from None
    if isinstance(obj, dict) and "params" in obj and "fit" in obj:  # a run's config.json
        obj = obj["params"]
    return params_from_json(obj, str(path))

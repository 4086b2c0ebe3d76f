"""Hyper-parameters of the NeRF field (``FitParams.nerf``; the fit's shared ones, steps, window,
image size, learning-rate schedule's length, weights of the mouth and alpha terms, are
``FitParams``'s own)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NerfConfig:
    """The field, its sampling and its training (ER-NeRF's numbers for the default preset)."""

    num_levels: int = 12
    """Levels of each plane's 2D hash grid (a tri-plane: xy, yz, xz)."""
    features_per_level: int = 1
    log2_table_size: int = 14
    base_resolution: int = 64
    max_resolution: int = 512
    hidden: int = 64
    """Width of the density and colour MLPs."""
    geo_dim: int = 16
    """Features the density MLP hands the colour MLP."""
    cond_dim: int = 32
    """Width of the conditioning (motion code, weighted per position by region attention)."""
    samples_per_ray: int = 64
    """Samples a ray takes through the head box (stratified while training, even at inference)."""
    rays_per_step: int = 4096
    """Rays a training step draws: half in the head region, a quarter around the lips, a quarter anywhere."""
    occupancy_resolution: int = 64
    """Cells per side of the occupancy grid over the head box."""
    occupancy_every: int = 16
    """Steps between updates of the occupancy grid (after occupancy_warmup steps)."""
    occupancy_warmup: int = 256
    """Steps before the grid starts skipping samples (all cells occupied until then)."""
    occupancy_threshold: float = 0.01
    """Density (per cm) below which a cell is empty (a 1 cm step through it would stop < 1 % of the light)."""
    lr_grid: float = 1e-2
    lr_mlp: float = 2e-3
    audio_hidden: int = 32
    """Width of the per-frame encoder of the audio window (runs fitted with --params.audio-features)."""
    audio_dim: int = 16
    """Channels of the encoded audio window that the region attention weighs beside the code's 52."""
    uncertainty: bool = False
    """Predict each ray's photometric error (a Laplace scale) and weigh the L1 by its inverse, so
    the fit leans less on what the code cannot explain (hair, a sliding collar). Off: on the tiny
    Obama fit it cost 0.7-2.7 dB of head PSNR (BENCHMARKS.md)."""
    beta_min: float = 0.01
    """The least predicted error (colour units 0..1): no pixel weighs more than 1 / beta_min times."""
    uncertainty_start: float = 0.25
    """Fraction of the steps after which the L1 is weighted by the predicted error (the error head learns from the start)."""
    w_uncertainty: float = 0.1
    """Weight of the uncertainty head's own loss (Laplace negative log-likelihood of the detached error)."""
    lips_start: float = 0.5
    """Fraction of the steps after which the lips stage starts (the box around the lips weighted x w_lips)."""
    w_lips: float = 2.0

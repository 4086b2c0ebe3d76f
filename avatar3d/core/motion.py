"""How a field reads the 52-channel motion code: standardised per channel and clamped to the range it was fitted on."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MOTION_RANGE_QUANTILE = 0.005  # the code is clamped per channel to the training frames' 0.5-99.5 %
# range: beyond what it was fitted on a field extrapolates and can tear holes in the lips
# (BENCHMARKS.md, render and eval: the clamp against min/max and no clamp).


@dataclass(frozen=True)
class MotionStats:
    """How a field reads the motion code: per-channel standardisation (``mean``,
    ``scale``) and the range it is clamped to (``lo``, ``hi``; -inf/inf: not clamped), raw
    blendshape units. Each [52]."""

    mean: torch.Tensor
    scale: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    @staticmethod
    def of_codes(motion: torch.Tensor, min_scale: float = 0.02) -> "MotionStats":
        """The statistics of the training frames' codes ``motion`` [T, 52]: their mean and standard
        deviation (floored at ``min_scale``), clamped to their ``MOTION_RANGE_QUANTILE`` ..
        1 - ``MOTION_RANGE_QUANTILE`` range per channel."""
        motion = motion.float()
        return MotionStats(
            motion.mean(0), motion.std(0).clamp(min=min_scale),
            torch.quantile(motion, MOTION_RANGE_QUANTILE, dim=0), torch.quantile(motion, 1 - MOTION_RANGE_QUANTILE, dim=0),
        )

    @staticmethod
    def unclamped(mean: torch.Tensor, scale: torch.Tensor) -> "MotionStats":
        return MotionStats(mean, scale, torch.full_like(mean, -math.inf), torch.full_like(mean, math.inf))

    @staticmethod
    def from_state(state: dict[str, torch.Tensor], prefix: str) -> "MotionStats":
        """The statistics saved in a field's state (keys ``prefix + motion_*``); avatars saved
        before the clamp existed have no range and stay unclamped."""
        stats = MotionStats.unclamped(state[prefix + "motion_mean"].cpu(), state[prefix + "motion_scale"].cpu())
        if prefix + "motion_lo" in state:
            stats = MotionStats(stats.mean, stats.scale, state[prefix + "motion_lo"].cpu(), state[prefix + "motion_hi"].cpu())
        return stats

"""The run layout: the one module that spells where things live in a RUN folder.

A run is written by ``avatar3d fit`` (built in ``.RUN.partial`` and renamed when finished) and read
by render, eval and the viewer::

    RUN/
      config.json     the fit command's options (``fit``: dataset, field, ...) and the field's
                      hyper-parameters (``params``), read back by a strict loader
      scene.json      the fitted image window in the dataset's frames (what drawing needs besides
                      the dataset's tracks)
      avatar.json     the field's spec; avatar.pt its weights (``load_avatar``)
      avatar.ply      the canonical Gaussians as a standard 3DGS .ply (Gaussian field)
      prior.pt        the audio-to-motion prior fine-tuned on this identity (absent: the shipped one)
      losses.jsonl    one JSON object per logged step: the named loss terms; losses.png plots them
      metrics.json    val-split PSNR / SSIM / LMD, timings; val.png the val frames
      checkpoint.pt   only while a fit runs (in .RUN.partial)
      eval.json       written by ``avatar3d eval`` (and eval.png beside it)
      eval_clip_cache.json  the real clip's measures eval reads every dataset frame for, kept
                      for the run's next eval (remeasured when the dataset or window changes)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from avatar3d.errors import UserError


@dataclass(frozen=True)
class RunPaths:
    """Where each part of a run lives. The only place a run's file names are spelled."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def scene(self) -> Path:
        return self.root / "scene.json"

    @property
    def avatar_spec(self) -> Path:
        return self.root / "avatar.json"

    @property
    def avatar_weights(self) -> Path:
        return self.root / "avatar.pt"

    @property
    def ply(self) -> Path:
        return self.root / "avatar.ply"

    @property
    def prior(self) -> Path:
        return self.root / "prior.pt"

    @property
    def viewer_pack(self) -> Path:
        """The avatar baked for the viewer's browser render mode (made by ``avatar3d view`` on first use)."""
        return self.root / "viewer.a3dw"

    @property
    def losses(self) -> Path:
        return self.root / "losses.jsonl"

    @property
    def losses_plot(self) -> Path:
        return self.root / "losses.png"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def val_png(self) -> Path:
        return self.root / "val.png"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_clip_cache(self) -> Path:
        """The real clip's measures that ``avatar3d eval`` reads every dataset frame for, kept
        between evals of the run (:func:`avatar3d.drive.evaluate.clip_frame_measures`)."""
        return self.root / "eval_clip_cache.json"


@dataclass(frozen=True)
class RunInfo:
    """A finished run: its folder, the dataset it was fitted on, the field, and the saved config."""

    paths: RunPaths
    data: Path  # the dataset folder (absolute)
    field: str  # "gaussian" (avatar3d.core.avatar.FIELDS)
    config: dict  # config.json as read (``fit`` and ``params``)

    @property
    def run(self) -> Path:
        return self.paths.root


def open_run(run: Path) -> RunInfo:
    """Check that RUN is a finished run; UserError (one line) when it is missing or corrupt.
    The dataset it names is checked by whoever reads it (:func:`avatar3d.core.scene.load_scene`)."""
    paths = RunPaths(Path(run))
    if not paths.root.exists():
        raise UserError(f"run not found: {paths.root}")
    if not paths.root.is_dir() or not paths.config.is_file():
        raise UserError(f"not an avatar3d run (no {paths.config.name}): {paths.root}")
    for p in (paths.avatar_spec, paths.avatar_weights):
        if not p.is_file():
            raise UserError(f"not a finished avatar3d run (no {p.name}): {paths.root}")
    try:
        config = json.loads(paths.config.read_text())
        fit = config["fit"]
        data = Path(fit["data"])
        field = fit.get("field", "gaussian")  # runs written before there was a choice
        if not isinstance(field, str) or not isinstance(config["params"], dict):
            raise TypeError("field must be a string and params an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"corrupt run config {paths.config}: {exc}") from None
    if not data.is_absolute():
        data = (Path.cwd() / data).resolve()
    return RunInfo(paths, data, field, config)

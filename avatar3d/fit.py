"""``avatar3d fit DATA -o RUN``: fit an avatar to a preprocessed dataset.

The field is chosen with ``--field`` (today: ``gaussian``, a deformable 3D Gaussian field: its
hyper-parameters, data, initialisation, losses and trainer live in :mod:`avatar3d.gaussian`). Its
hyper-parameters start from ``--preset`` and any of them can be overridden on the command line
(``--params.steps 300``, ``--params.strategy.max-gaussians 8000``).

RUN is built in ``.RUN.partial`` beside it (checkpoints land there, atomically) and renamed at
the end; ``--resume`` continues a killed fit from its last checkpoint with the parameters it was
started with. A finished RUN is laid out as :mod:`avatar3d.core.runs` says: config.json (the
FitConfig and the FitParams used), scene.json, avatar.json/avatar.pt, avatar.ply, prior.pt,
losses.jsonl (every ``log_every`` steps: the mean of each named loss term, the head PSNR, the
primitive (Gaussian) count, seconds) and losses.png, metrics.json (val-split PSNR / SSIM / LMD, timings) and
val.png (val frames, rows of prediction | truth | error, mouth closed ... open).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import torch
import tyro

from avatar3d import fsutil
from avatar3d.core.config import json_safe
from avatar3d.core.runs import RunPaths
from avatar3d.core.scene import write_scene_file
from avatar3d.core.vocab import blendshape_index
from avatar3d.device import resolve_device
from avatar3d.errors import UserError
from avatar3d.gaussian.config import PRESETS, FitParams, params_from_json, resolve_preset


@dataclass(frozen=True)
class FitConfig:
    """Fit an avatar to a dataset made by `avatar3d preprocess`."""

    data: tyro.conf.Positional[Path]
    """Dataset folder (from `avatar3d preprocess`)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """Run folder to write (replaced when the fit completes)."""
    preset: str = ""
    """Hyper-parameters to start from: tiny (CPU, minutes), small (CPU, ~17 min, 256²: sharper
    lips), demo, default (GPU), or a JSON file of FitParams fields (or a run's config.json).
    Empty: default for a new fit, the saved ones with --resume."""
    params: FitParams = None  # type: ignore[assignment]  # None: the preset's (see resolved_params)
    """The hyper-parameters themselves: the preset's, with any field overridden here
    (--params.steps 300)."""
    field: Literal["gaussian", "nerf"] = "gaussian"
    """The kind of avatar: a deformable 3D Gaussian field, or a hash-grid NeRF conditioned on the
    motion code (its hyper-parameters: --params.nerf.*)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device to fit on; auto = cuda when available, else cpu."""
    resume: bool = False
    """Continue a killed fit of OUTPUT from its last checkpoint, with the parameters it was started
    with (a different --preset or --params is an error)."""
    progress: bool = True
    """Show a progress bar."""
    threads: int = 1
    """CPU threads for PyTorch (0 = PyTorch's default). One by default: on a busy 2-core machine
    several threads oversubscribe the cores (BENCHMARKS.md)."""
    wandb: bool = False
    """Also log the loss terms to Weights & Biases (offline unless you have logged in; needs
    `pip install wandb`)."""
    max_minutes: float = 0.0
    """Wall-time budget of the optimisation: stop after this many minutes even if fewer than
    params.steps are done, then finish the run as usual (save, measure); 0 = no budget."""

    @classmethod
    def cli_default(cls, argv: list[str]) -> "FitConfig":
        """The defaults the command line starts from: ``--preset``'s parameters (found in
        ``argv``), so that ``--params.*`` overrides fields of that preset."""
        preset = ""
        for k, a in enumerate(argv):
            if a == "--preset" and k + 1 < len(argv):
                preset = argv[k + 1]
            elif a.startswith("--preset="):
                preset = a.split("=", 1)[1]
        return cls(data=tyro.MISSING, output=tyro.MISSING, preset=preset,  # type: ignore[arg-type]
                   params=resolve_preset(preset or "default"))

    def resolved_params(self) -> FitParams:
        """``params``, or the preset's when none were given."""
        return self.params if self.params is not None else resolve_preset(self.preset or "default")


def check_resume_params(config: FitConfig, saved: FitParams, where: Path) -> FitParams:
    """The parameters a resumed fit continues with: the saved ones. Asking for others (a preset
    or overrides that differ from them) is a UserError naming the fields that differ."""
    asked = config.resolved_params()
    if asked == saved or (not config.preset and asked == PRESETS["default"]):
        return saved
    differ = _differing_fields(saved, asked)
    raise UserError(
        f"--resume continues the fit in {where} with the parameters it was started with; "
        f"{', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''} differ: drop --preset/--params or start over"
    )


def _differing_fields(a, b, prefix: str = "") -> list[str]:
    out = []
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if hasattr(x, "__dataclass_fields__") and type(x) is type(y):
            out += _differing_fields(x, y, f"{prefix}{f.name}.")
        elif x != y:
            out.append(f"{prefix}{f.name} ({x!r} saved, {y!r} asked)")
    return out


# ---------------------------------------------------------------------------------------------
# What a fit writes besides the avatar


def write_val_png(path: Path, data, preds: list[torch.Tensor], rows: int = 4) -> list[int]:
    """Rows of prediction | truth | |error| x4 for val frames from mouth closed to open;
    returns the frames shown."""
    import cv2

    jaw = data.motion[data.val, blendshape_index("jawOpen")].numpy()
    order = np.argsort(jaw)
    picks = sorted({int(order[int(round(q * (len(order) - 1)))]) for q in np.linspace(0, 1, rows)},
                   key=lambda k: jaw[k])
    panels = []
    for k in picks:
        truth = data.frame(int(data.val[k])).image.float() / 255
        pred = preds[k]
        err = ((pred - truth).abs() * 4).clamp(0, 1)
        panels.append(torch.cat([pred, truth, err], 1))
    grid = (torch.cat(panels, 0) * 255).round().to(torch.uint8).numpy()
    S = data.window.size
    if S < 256:
        f = math.ceil(256 / S)
        grid = np.repeat(np.repeat(grid, f, 0), f, 1)
    with fsutil.atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(grid[..., ::-1])):
            raise OSError(f"could not write {path}")
    return [int(data.val[k]) for k in picks]


def finetune_identity_prior(data_dir: Path, out: Path, steps: int, device, closure_weight: float = 0.0,
                            voice_match: float = 1.0, contrast: float = 0.0, contrast_away: float = 0.0) -> str:
    """Fine-tune the shipped audio-to-motion prior on the dataset's train split (widened to the
    identity's articulation; its /p b m/ frames weighted by ``closure_weight`` when > 0; matching
    driving voices to the identity's by ``voice_match``; syllable contrast ``contrast`` toward rest,
    ``contrast_away`` away from it) and save
    it to ``out`` (RUN/prior.pt). Returns a one-word description for metrics.json. Skipped (the generic
    prior is used) when ``steps`` is 0 or the dataset has no features for the prior's encoder."""
    from avatar3d.audio.prior import finetune_prior, load_prior, save_prior
    from avatar3d.core.dataset import DatasetPaths

    if steps <= 0:
        return "generic"
    prior = load_prior(None, "cpu")
    if not DatasetPaths(Path(data_dir)).features(prior.config.encoder).is_file():
        return "generic"
    tuned = finetune_prior(prior, [Path(data_dir)], steps=steps, device=device, closure_weight=closure_weight,
                           voice_match=voice_match, contrast=contrast, contrast_away=contrast_away)
    save_prior(tuned.cpu(), out)
    return "finetuned"


class LossLog:
    """The named loss terms, each averaged over the steps it applied to in every ``every`` steps,
    appended to RUN/losses.jsonl (and to wandb when asked); :meth:`plot` draws them."""

    def __init__(self, path: Path, every: int, wandb_run=None):
        self.path = path
        self.every = max(1, every)
        self.wandb = wandb_run
        self._terms: list[dict[str, float]] = []
        self._psnr: list[float] = []
        self.t0 = time.time()

    def add_val(self, step: int, psnr_head: float) -> None:
        """A held-out measurement during the fit: one row ``{"step", "val_psnr_head", "seconds"}``."""
        row = {"step": step, "val_psnr_head": psnr_head, "seconds": round(time.time() - self.t0, 2)}
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")
        if self.wandb is not None:
            self.wandb.log({"val_psnr_head": psnr_head}, step=step)

    def add(self, step: int, terms: dict[str, float], psnr: float, primitives: int, last: bool) -> dict | None:
        """Record one step; every ``every`` steps (and at the last) write and return the means."""
        self._terms.append(terms)
        self._psnr.append(psnr)
        if step % self.every and not last:
            return None
        names = list(dict.fromkeys(k for t in self._terms for k in t))
        row = {"step": step, **{k: float(np.mean([t[k] for t in self._terms if k in t])) for k in names},
               "psnr_head": float(np.mean(self._psnr)), "primitives": primitives,
               "seconds": round(time.time() - self.t0, 2)}
        self._terms, self._psnr = [], []
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        return row

    def plot(self, path: Path) -> None:
        """Each loss term and the head PSNR against the step, as a PNG (atomically)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.path.is_file():
            return
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        rows = [r for r in lines if "total" in r]
        val = [r for r in lines if "val_psnr_head" in r]
        if not rows:
            return
        steps = [r["step"] for r in rows]
        terms = [k for k in rows[-1] if k not in ("step", "psnr_head", "primitives", "seconds")]
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
        for k in terms:
            ax.plot(steps, [r.get(k) for r in rows], lw=1.5 if k == "total" else 1, label=k)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title("loss terms (weighted)", fontsize=9)
        ax.legend(fontsize=7)
        ax2.plot(steps, [r["psnr_head"] for r in rows], "k-", lw=1, label="training frames")
        if val:
            ax2.plot([r["step"] for r in val], [r["val_psnr_head"] for r in val], "C3o-", lw=1, ms=3,
                     label="val frames")
        ax2.set_xlabel("step")
        ax2.set_title("head PSNR (dB)", fontsize=9)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        with fsutil.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)


def _wandb_module():
    """The wandb package, or a UserError saying how to get it."""
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb") from None
    return wandb


def _start_wandb(config: FitConfig, params: FitParams, out: Path):
    """A wandb run (offline unless the user has logged in)."""
    wandb = _wandb_module()
    mode = "online" if wandb.api.api_key else "offline"
    return wandb.init(project="avatar3d", name=out.name, mode=mode,
                      config={"fit": _config_json(config), "params": params.to_json()})


# ---------------------------------------------------------------------------------------------
# The command


# field -> the module holding its ``Trainer`` (start/resume/train_step/checkpoint/save_avatar/
# counts, an ``avatar`` drawn through avatar3d.core.avatar) and its ``load_fit_data``
FIELD_TRAINERS: dict[str, str] = {"gaussian": "avatar3d.gaussian.trainer", "nerf": "avatar3d.nerf.trainer"}


def run_fit(config: FitConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Fit and write RUN (see module docstring). ``on_step(step)`` is called after each step."""
    import importlib

    from tqdm import tqdm

    from avatar3d.drive.val import val_metrics

    field = importlib.import_module(FIELD_TRAINERS[config.field])
    device = resolve_device(config.device)
    if config.wandb:
        _wandb_module()  # missing: say so before anything is loaded or written
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = Path(config.output)
    work = fsutil.work_dir_for(out)
    paths = RunPaths(work)
    if config.resume:
        if not paths.checkpoint.is_file():
            raise UserError(f"nothing to resume: no checkpoint in {work} (start without --resume)")
        try:
            saved = json.loads(paths.config.read_text())
            params = params_from_json(saved["params"], str(paths.config))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot resume from {work}: {exc}") from None
        params = check_resume_params(config, params, work)
    else:
        params = config.resolved_params()
        if work.exists():
            shutil.rmtree(work)
    data = field.load_fit_data(config.data, params)
    t0 = time.time()

    if config.resume:
        trainer = field.Trainer.resume(paths, params, device)
        print(f"avatar3d fit: resuming {out} at step {trainer.step}/{params.steps}")
    else:
        work.mkdir(parents=True)
        trainer = field.Trainer.start(data, params, device, paths)
        fsutil.write_json(paths.config, {"fit": _config_json(config), "params": params.to_json()})
        write_scene_file(paths.scene, data.window, data.neck_reach)

    log = LossLog(paths.losses, params.log_every, _start_wandb(config, params, out) if config.wandb else None)
    deadline = t0 + 60 * config.max_minutes if config.max_minutes > 0 else math.inf
    peek = np.asarray(data.val)[np.linspace(0, len(data.val) - 1, min(8, len(data.val))).astype(int)]
    bar = tqdm(total=params.steps, initial=trainer.step, disable=not config.progress, desc="fit", unit="step",
               dynamic_ncols=True)
    while trainer.step < params.steps:
        terms, p = trainer.train_step(data, params, device)
        bar.update(1)
        out_of_time = time.time() > deadline and trainer.step < params.steps
        last = trainer.step == params.steps or out_of_time
        row = log.add(trainer.step, terms, p, trainer.counts()["primitives"], last)
        if row is not None:
            bar.set_postfix(loss=f"{row['total']:.4f}", psnr=f"{row['psnr_head']:.2f}", n=row["primitives"])
        if trainer.step % params.checkpoint_every == 0 and trainer.step < params.steps:
            trainer.checkpoint(paths)
        if params.val_every and trainer.step % params.val_every == 0:
            log.add_val(trainer.step, val_metrics(trainer.avatar, data, data.frame, device, False, peek)[0]["psnr_head"])
        if on_step is not None:
            on_step(trainer.step)
        if out_of_time:
            print(f"avatar3d fit: --max-minutes {config.max_minutes:g} reached at step {trainer.step}/{params.steps}")
            break
    bar.close()
    fit_seconds = time.time() - t0
    if log.wandb is not None:
        log.wandb.finish()
    log.plot(paths.losses_plot)

    trainer.save_avatar(paths)
    prior_info = finetune_identity_prior(config.data, paths.prior, params.prior_finetune_steps, device,
                                         params.prior_closure_weight, params.prior_voice_match,
                                         params.prior_contrast, params.prior_contrast_away)
    t1 = time.time()
    metrics, preds = val_metrics(trainer.avatar, data, data.frame, device)
    metrics["val_png_frames"] = write_val_png(paths.val_png, data, preds)
    counts = trainer.counts()
    metrics.update(
        steps=params.steps, steps_done=trainer.step, fit_seconds=round(fit_seconds, 1), eval_seconds=round(time.time() - t1, 1),
        **{k: v for k, v in counts.items() if k != "primitives"}, device=str(device), prior=prior_info,
        frame_store=data.frames.form, frame_store_mb=round(data.frames.nbytes() / 2**20, 1),
    )
    fsutil.write_json(paths.metrics, json_safe(metrics))
    paths.checkpoint.unlink(missing_ok=True)
    fsutil.commit_dir(work, out)
    drawn = "head and neck" if data.neck_reach > 0 else "head"  # psnr_head is over what the avatar draws
    print(
        f"avatar3d fit: {out}  val PSNR {metrics['psnr']:.2f} dB ({drawn} {metrics['psnr_head']:.2f}), "
        f"SSIM {metrics['ssim']:.3f} ({drawn} {metrics['ssim_head']:.3f}), LMD {_px(metrics.get('lmd_px'))} "
        f"at {metrics['resolution'][0]}x{metrics['resolution'][1]}, {counts['primitives']} {config.field} primitives, "
        f"fit {fit_seconds:.0f} s"
    )
    return metrics


def _px(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f} px"


def _config_json(config: FitConfig) -> dict:
    """The command's options as saved in config.json's ``fit`` (the params are saved beside them)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(replace(config, params=None)).items()
            if k != "params"}

"""``avatar3d demo``: the whole path on a subject the project makes itself, no user data, no network.

1. synth: a seeded synthetic talking head (avatar3d.synth.subject) -> DIR/subject/clip.mp4 + ground truth
2. preprocess: the real pipeline -> DIR/data
3. fit: preset tiny on CPU, default on CUDA -> DIR/run
4. render: the avatar speaking a second synthesised sentence -> DIR/demo.mp4
5. eval: held-out metrics and mouth sync on that sentence -> DIR/run/eval.json (+ .png)

Each step is the same code the individual commands run; a finished step is kept when the demo is
rerun (delete DIR or pass --force to start over).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from avatar3d import fsutil
from avatar3d.core.dataset import DatasetPaths
from avatar3d.core.runs import RunPaths
from avatar3d.errors import UserError


@dataclass(frozen=True)
class DemoConfig:
    """Run the whole avatar3d path on the embedded synthetic subject and write an mp4."""

    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("demo_out")
    """Folder for everything the demo makes."""
    seed: int = 0
    """Seed of the synthetic subject (same seed, same clip)."""
    seconds: float = 8.0
    """Length of the training clip in seconds."""
    speech_seconds: float = 6.0
    """Length of the second sentence the avatar speaks."""
    preset: str = ""
    """Fit preset; empty = demo (tiny, fewer steps) on CPU, default on CUDA."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device for fit, render and eval."""
    force: bool = False
    """Redo every step even if its output exists."""

    def __post_init__(self) -> None:
        if self.seconds < 4 or self.speech_seconds < 1:
            raise UserError("demo needs --seconds >= 4 and --speech-seconds >= 1")


def _step(name: str, done: bool, fn) -> float:
    if done:
        print(f"demo: {name}: done earlier, kept")
        return 0.0
    t0 = time.time()
    fn()
    seconds = time.time() - t0
    print(f"demo: {name}: {seconds:.0f} s")
    return seconds


def run_demo(config: DemoConfig) -> dict:
    import torch

    from avatar3d.core.video import write_wav
    from avatar3d.drive.evaluate import EvalConfig, run_eval
    from avatar3d.fit import FitConfig, run_fit
    from avatar3d.preprocess.pipeline import PreprocessConfig, run_preprocess
    from avatar3d.drive.render import RenderConfig, run_render
    from avatar3d.synth.subject import SynthConfig, SynthPaths, run_synth, speech_audio

    root = Path(config.output)
    if config.force and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    preset = config.preset or ("default" if cuda else "demo")
    device = "cuda" if cuda else "cpu"
    subject, data, run = root / "subject", DatasetPaths(root / "data"), RunPaths(root / "run")
    speech, video = root / "speech.wav", root / "demo.mp4"
    timings = {
        "synth": _step("synth", SynthPaths(subject).clip.is_file(), lambda: run_synth(
            SynthConfig(output=subject, seed=config.seed, seconds=config.seconds))),
        "preprocess": _step("preprocess", data.manifest.is_file(), lambda: run_preprocess(
            PreprocessConfig(video=SynthPaths(subject).clip, output=data.root))),
        "fit": _step("fit", run.metrics.is_file(), lambda: run_fit(
            FitConfig(data=data.root, output=run.root, preset=preset, device=device))),
        "render": _step("render", video.is_file(), lambda: (
            write_wav(speech, speech_audio(config.seed + 1, config.speech_seconds)),
            run_render(RenderConfig(run=run.root, audio=speech, output=video, device=device)))),
    }
    timings["eval"] = _step("eval", False, lambda: run_eval(
        EvalConfig(run=run.root, audio=speech, device=device)))
    fsutil.write_json(root / "demo.json", {"preset": preset, "device": device, "seconds": timings})
    print(f"demo: {video}  (report: {run.eval_json}, fit metrics: {run.metrics}, dataset report: {data.report})")
    return timings

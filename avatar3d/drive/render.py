"""``avatar3d render RUN --audio WAV -o OUT.mp4``: make a fitted avatar speak new audio.

audio (any format, any rate) -> 16 kHz mono -> the audio-to-motion prior (RUN/prior.pt when fit
wrote an identity-fine-tuned one, else the shipped prior) -> per-frame mouth/jaw/cheek
blendshapes. The other blendshapes (blinks, brows, gaze) and the head pose come from a trajectory
of the training clip: ``--pose clip`` walks the tracked training frames forward and back
(ping-pong) for as long as the audio lasts, ``--pose still`` holds one frame's pose.

Each frame: the avatar (:func:`avatar3d.core.avatar.load_avatar`, any field) drawn at the fit
window's resolution -> upsampled to the window's size in the dataset frame -> composited
(premultiplied alpha) over that trajectory frame's base (:func:`avatar3d.core.scene.compose_base`:
its own torso and background, the plate where its head was, its neck carried up where the avatar
draws the neck; ``--background IMAGE`` also replaces the pixels labelled background). The torso
therefore moves exactly as it moved with that head pose in the real clip. Frames go to an H.264
mp4 at 25 fps with the audio muxed as AAC; frame count = round(audio duration x 25), audio
padded/trimmed to the same length. The mp4 is written atomically.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from avatar3d.core.dataset import AUDIO_RATE, FPS, SAMPLES_PER_FRAME
from avatar3d.core.runs import RunPaths
from avatar3d.core.scene import Scene, Window, frame_conditioning, iter_dataset_frames
from avatar3d.device import resolve_device
from avatar3d.errors import UserError

MIN_AUDIO_SECONDS = 0.5
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
MUX_MIN_RATE = 44_100  # lower source rates are muxed at 48 kHz (AAC frames of 1024 samples stay < 25 ms)


@dataclass(frozen=True)
class RenderConfig:
    """Render a fitted avatar speaking an audio file to an mp4 with the sound muxed in."""

    run: tyro.conf.Positional[Path]
    """Run folder (from `avatar3d fit`)."""
    audio: Path
    """Driving audio: any common audio (or video) format and sample rate."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """The mp4 to write (its folder must exist)."""
    pose: Literal["clip", "still"] = "clip"
    """clip: head pose and torso follow the training clip, looped back and forth; still: one frame's pose."""
    still_frame: int = 0
    """With --pose still: which tracked training frame (0 = the first) gives the pose."""
    background: Path | None = None
    """An image to show instead of the recorded background (resized to the frame)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device to render on; auto = cuda when available, else cpu."""
    crf: int = 18
    """H.264 quality (0-51, lower is better)."""
    progress: bool = True
    """Show a progress bar."""


# ---------------------------------------------------------------------------------------------
# Inputs (all checked before anything heavy runs or anything is written)


def load_driving_audio(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Read the driving audio: (``[S] float32`` 16 kHz mono for the prior, ``[S'] float32`` mono at
    the mux rate, the mux rate). UserError when unreadable, empty or shorter than 0.5 s."""
    from avatar3d.audio.features import load_audio
    from avatar3d.core.video import probe, read_audio

    path = Path(path)
    info = probe(path)  # UserError: missing, empty, not media
    if not info.has_audio:
        raise UserError(f"no audio track in {path}")
    audio16 = load_audio(path)
    if len(audio16) == 0:
        raise UserError(f"audio {path} is empty")
    seconds = len(audio16) / AUDIO_RATE
    if seconds < MIN_AUDIO_SECONDS:
        raise UserError(f"audio {path} is {seconds:.2f} s long: render needs at least {MIN_AUDIO_SECONDS} s")
    rate = info.audio_rate if info.audio_rate in AAC_RATES and info.audio_rate >= MUX_MIN_RATE else 48_000
    mux = read_audio(path, rate=rate)
    return audio16, mux, rate


def check_output(path: Path, suffix: str = ".mp4") -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise UserError(f"output is a folder, expected a file: {path}")
    if path.suffix.lower() != suffix:
        raise UserError(f"output must be a {suffix} file: {path}")
    return path


def read_background_image(path: Path, size: int) -> np.ndarray:
    """``--background`` image resized to the frame: ``[size, size, 3] uint8`` RGB."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise UserError(f"background image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"cannot read background image {path}")
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[..., ::-1])


# ---------------------------------------------------------------------------------------------
# Driving signals


def num_output_frames(num_samples: int, rate: int = AUDIO_RATE) -> int:
    """round(duration x 25)."""
    return max(1, int(round(num_samples / rate * FPS)))


def ping_pong(num: int, length: int) -> np.ndarray:
    """Indices 0, 1, .., length-1, length-2, .., 1, 0, 1, ... of ``num`` steps. [num] int"""
    return ping_pong_at(np.arange(num), length)


def ping_pong_at(steps: np.ndarray, length: int) -> np.ndarray:
    """The ping-pong index (see :func:`ping_pong`) at each of ``steps`` [N] int. [N] int"""
    steps = np.asarray(steps, np.int64)
    if length <= 1:
        return np.zeros(len(steps), np.int64)
    period = 2 * (length - 1)
    p = steps % period
    return np.where(p < length, p, period - p).astype(np.int64)


def trajectory(train: np.ndarray, num: int, pose: str, still_frame: int = 0) -> np.ndarray:
    """Dataset frame indices giving each output frame its head pose and torso. [num] int"""
    train = np.asarray(train, np.int64)
    if pose == "still":
        if not 0 <= still_frame < len(train):
            raise UserError(f"--still-frame {still_frame} is out of range: the run has {len(train)} training frames")
        return np.full(num, train[still_frame], np.int64)
    return train[ping_pong(num, len(train))]


def load_run_prior(run: Path, device):
    """RUN/prior.pt (fine-tuned on the identity) when present, else the shipped prior; and the
    path it came from (None: shipped)."""
    from avatar3d.audio.prior import load_prior

    path = RunPaths(Path(run)).prior
    return load_prior(path if path.is_file() else None, device=device), (path if path.is_file() else None)


def fit_audio(audio16: np.ndarray, num: int) -> np.ndarray:
    """16 kHz audio zero-padded or trimmed to exactly ``num`` video frames. [num * SAMPLES_PER_FRAME]"""
    need = num * SAMPLES_PER_FRAME
    audio = np.zeros(need, np.float32)
    audio[: min(need, len(audio16))] = audio16[:need]
    return audio


def motion_from_audio(prior, audio16: np.ndarray, num: int, base: np.ndarray) -> np.ndarray:
    """Per-frame blendshapes ``[num, 52]``: mouth channels from the prior, the rest from ``base`` [num, 52]."""
    from avatar3d.audio.prior import blendshapes_from_motion, predict_motion_from_audio

    motion = predict_motion_from_audio(prior, fit_audio(audio16, num))  # [num, 28]
    return blendshapes_from_motion(motion[:num], base=base)


def audio_features_for(avatar, audio16: np.ndarray, num: int) -> torch.Tensor | None:
    """The avatar's own audio features of the driving audio, ``[num, A]`` flattened (None if it has none)."""
    name = avatar.audio_features
    if not name:
        return None
    from avatar3d.audio import features as A

    feats = A.encode(name, fit_audio(audio16, num)).reshape(num, -1)
    return torch.from_numpy(np.ascontiguousarray(feats, np.float32))


# ---------------------------------------------------------------------------------------------
# Compositing into the dataset frame


@dataclass(frozen=True)
class FrameBase:
    """What one output frame is composited over, at the dataset's frame size."""

    image: np.ndarray  # [H, W, 3] uint8: the base (:func:`avatar3d.core.scene.compose_base`)
    labels: np.ndarray  # [H, W] uint8 label map of that dataset frame
    landmarks: np.ndarray  # [478, 2] its tracked landmarks (dataset pixels)
    frame: np.ndarray | None = None  # [H, W, 3] uint8 the dataset frame itself, when asked for


class FrameBases:
    """The composite bases of a scene's dataset frames in ``indices``, decoded on first use:
    ``bases[i]`` decodes the clip forward up to frame i (once, in one pass: earlier wanted frames
    are kept on the way), so the first output frame does not wait for the whole trajectory.
    ``background`` (``[H, W, 3] uint8``, optional) replaces the pixels labelled background;
    ``keep_frames`` keeps each dataset frame beside its base (for measures against it)."""

    def __init__(self, scene: Scene, indices: np.ndarray, background: np.ndarray | None = None,
                 keep_frames: bool = False):
        from avatar3d.core.scene import read_plate

        self._scene = scene
        self._frames = iter_dataset_frames(scene.data_dir, np.unique(indices))
        self._plate, self._background = read_plate(scene.data_dir, scene.frame_size), background
        self._keep = keep_frames
        self._done: dict[int, FrameBase] = {}

    def __getitem__(self, i: int) -> FrameBase:
        while i not in self._done:
            try:
                j, frame, labels = next(self._frames)
            except StopIteration:
                raise KeyError(f"frame {i} is not one of the bases asked for") from None
            self._done[j] = self._base(j, frame, labels)
        return self._done[i]

    def _base(self, i: int, frame: np.ndarray, labels: np.ndarray) -> FrameBase:
        from avatar3d.core.scene import compose_base

        lm = self._scene.frame_landmarks(i)
        base = compose_base(frame, labels, lm, self._plate, self._scene.neck_reach, self._background)
        return FrameBase(base, labels, lm, frame if self._keep else None)


def head_at_window_side(rgba: torch.Tensor, window: Window) -> np.ndarray:
    """Head RGBA [S, S, 4] (premultiplied, window resolution) resampled to the window's side in
    dataset pixels: ``[side, side, 4]`` float32 in [0, 1]."""
    x = rgba.permute(2, 0, 1)[None].float()
    if x.shape[-1] != window.side:
        x = F.interpolate(x, size=(window.side, window.side), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def paste(rgba: torch.Tensor, base: np.ndarray, window: Window) -> np.ndarray:
    """Head RGBA [S, S, 4] (premultiplied, window resolution) over ``base`` [H, W, 3] uint8 -> uint8."""
    return paste_head(head_at_window_side(rgba, window), base, window)


def paste_head(head: np.ndarray, base: np.ndarray, window: Window) -> np.ndarray:
    """:func:`head_at_window_side`'s ``[side, side, 4]`` over ``base`` [H, W, 3] uint8 -> uint8."""
    side = window.side
    out = base.copy()
    crop = (slice(window.y0, window.y0 + side), slice(window.x0, window.x0 + side))
    bg = out[crop].astype(np.float32) / 255
    comp = head[..., :3] + (1 - head[..., 3:]) * bg
    out[crop] = np.clip(np.round(comp * 255), 0, 255).astype(np.uint8)
    return out


def alpha_in_frame(head: np.ndarray, window: Window, frame_size: int) -> np.ndarray:
    """The head's coverage over the whole dataset frame: ``[H, W]`` float32 (0 outside the window)
    from :func:`head_at_window_side`'s ``[side, side, 4]``."""
    alpha = np.zeros((frame_size, frame_size), np.float32)
    alpha[window.y0:window.y0 + window.side, window.x0:window.x0 + window.side] = head[..., 3]
    return alpha


# ---------------------------------------------------------------------------------------------
# The driven sequence (shared with eval)


@dataclass(frozen=True)
class Driven:
    """A driven sequence ready to render."""

    trajectory: np.ndarray  # [N] dataset frame index per output frame
    blendshapes: torch.Tensor  # [N, 52]
    audio_features: torch.Tensor | None  # [N, A]


def drive(avatar, scene: Scene, prior, audio16: np.ndarray, num: int, pose: str = "clip", still_frame: int = 0) -> Driven:
    """Blendshapes and poses of ``num`` output frames driven by ``audio16`` (see module docstring)."""
    traj = trajectory(scene.train, num, pose, still_frame)
    base = scene.motion[traj].numpy()  # [N, 52] tracked blendshapes of the trajectory frames
    bs = motion_from_audio(prior, audio16, num, base)
    return Driven(traj, torch.from_numpy(bs), audio_features_for(avatar, audio16, num))


@torch.no_grad()
def render_heads(avatar, scene: Scene, driven: Driven, device) -> Iterator[torch.Tensor]:
    """Head RGBA of each driven frame at the window resolution: [S, S, 4] (premultiplied), on the CPU."""
    for k, i in enumerate(driven.trajectory):
        cond = frame_conditioning(driven.blendshapes, driven.audio_features, k, avatar.audio_window, device)
        yield avatar.render(cond, scene.camera(int(i), device)).cpu()


def render_frames(avatar, scene: Scene, driven: Driven, bases: FrameBases, device) -> Iterator[np.ndarray]:
    """Full dataset-size frames ``[H, W, 3] uint8`` of a driven sequence."""
    for _, frame, _ in render_composites(avatar, scene, driven, bases, device):
        yield frame


def render_composites(avatar, scene: Scene, driven: Driven, bases: FrameBases, device
                      ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per driven frame: its dataset frame index, the full frame ``[H, W, 3] uint8`` and the head
    pasted into it (:func:`head_at_window_side`, ``[side, side, 4]``)."""
    for i, rgba in zip(driven.trajectory, render_heads(avatar, scene, driven, device)):
        head = head_at_window_side(rgba, scene.window)
        yield int(i), paste_head(head, bases[int(i)].image, scene.window), head


# ---------------------------------------------------------------------------------------------
# The command


def run_render(config: RenderConfig) -> dict:
    """Write config.output (see module docstring); returns a summary."""
    from tqdm import tqdm

    from avatar3d.core.avatar import load_avatar
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene
    from avatar3d.core.video import VideoWriter
    from avatar3d.fsutil import atomic_path

    t0 = time.time()
    out = check_output(config.output)
    info = open_run(config.run)
    audio16, mux, mux_rate = load_driving_audio(config.audio)
    device = resolve_device(config.device)

    avatar = load_avatar(info.run, device)
    scene = load_run_scene(info, avatar.audio_features)
    size = scene.frame_size
    background = read_background_image(config.background, size) if config.background is not None else None
    prior, prior_path = load_run_prior(info.run, device)
    num = num_output_frames(len(audio16))
    driven = drive(avatar, scene, prior, audio16, num, config.pose, config.still_frame)
    bases = FrameBases(scene, driven.trajectory, background)

    # the muxed audio lasts exactly num / 25 s (padded with silence or trimmed by < 20 ms)
    need = int(round(num * mux_rate / FPS))
    audio_out = np.zeros(need, np.float32)
    audio_out[: min(need, len(mux))] = mux[:need]

    bar = tqdm(total=num, disable=not config.progress, desc="render", unit="frame", dynamic_ncols=True)
    with atomic_path(out) as tmp:
        with VideoWriter(tmp, size, size, fps=FPS, crf=config.crf, audio=audio_out, audio_rate=mux_rate) as writer:
            for frame in render_frames(avatar, scene, driven, bases, device):
                writer.write(frame)
                bar.update(1)
    bar.close()
    seconds = time.time() - t0
    summary = {
        "output": str(out), "frames": num, "seconds_of_video": num / FPS, "audio_rate": mux_rate,
        "size": size, "pose": config.pose, "prior": str(prior_path) if prior_path else "shipped",
        "wall_seconds": round(seconds, 1),
    }
    print(
        f"avatar3d render: {out}  {num} frames ({num / FPS:.2f} s) at {size}x{size}, audio {mux_rate} Hz AAC, "
        f"pose {config.pose}, prior {'RUN/prior.pt' if prior_path else 'shipped'}, "
        f"{seconds:.0f} s ({num / max(seconds, 1e-9):.1f} frames/s)"
    )
    return summary

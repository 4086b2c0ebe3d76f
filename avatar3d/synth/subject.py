"""``avatar3d synth``: a seeded synthetic talking-head clip with exact ground truth.

The subject is scikit-image's astronaut photo on a 3D head (avatar3d.synth.mesh) that speaks
audio the project synthesises (avatar3d.synth.speech), with smooth small head motion, a torso that
follows the head loosely, and a static background; rendered by avatar3d.synth.raster. Same seed,
same length and size -> the same arrays and the same files.

Output folder (see :class:`SynthPaths`)::

    OUT/
      clip.mp4     size x size, 25 fps H.264 + AAC mono 16 kHz audio
      truth.npz    ground truth arrays (see TRUTH_KEYS)
      truth.json   what the arrays mean, the config, the label names, timings
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator

import numpy as np
import torch
import tyro

from avatar3d.synth import raster as synth_raster
from avatar3d.core.dataset import AUDIO_RATE, FPS, SAMPLES_PER_FRAME, Label
from avatar3d.errors import UserError
from avatar3d.fsutil import commit_dir, work_dir_for, write_json
from avatar3d.synth.speech import Speech, synth_speech
from avatar3d.synth.mesh import SubjectMesh, build_subject
from avatar3d.core.vocab import LOWER_INNER_LIP_MID, NUM_LANDMARKS, UPPER_INNER_LIP_MID
from avatar3d.core.video import VideoWriter

TRUTH_KEYS: dict[str, str] = {
    "K": "[3, 3] float32 intrinsics (pixels; pixel centres at +0.5)",
    "R": "[N, 3, 3] float32 head-to-camera rotation (OpenCV camera: x right, y down, z forward)",
    "t": "[N, 3] float32 head-to-camera translation (cm): camera point = R @ X + t",
    "canonical": "[478, 3] float32 mediapipe landmark positions in head space at rest (cm)",
    "landmarks_cam": "[N, 478, 3] float32 landmarks in camera space (cm), jaw motion included",
    "landmarks_2d": "[N, 478, 2] float32 their projections (pixels), visible or not",
    "mouth_open": "[N] float32 inner-lip gap |landmark 13 - landmark 14| (cm)",
    "jaw_angle": "[N] float32 jaw rotation (radians, 0 = the photo's mouth)",
    "envelope": "[N] float32 the speech's syllable amplitude envelope at each frame centre",
    "blink": "[N] float32 eye closure in [0, 1] (1: upper lids 90% of the way down)",
    "labels": "[N, H, W] uint8 avatar3d.core.dataset.Label of each pixel (compressed in the npz)",
    "audio": "[S] float32 mono 16 kHz, S = N * 640",
    "head_size": "[] float32 head size (cm): diagonal of the bounding box of `canonical` (~22 cm)",
    "background": "[H, W, 3] uint8 the static background plate",
}

MAX_JAW_DEG = 15.0
FOCAL = 2.5  # focal length in frame widths (horizontal field of view ~22.6 deg, as filmed talking heads)
HEAD_DEPTH_CM = 97.0  # camera to head centre; the face is ~170 px wide in a 512 frame


@dataclass(frozen=True)
class SynthPaths:
    """File names of a synth output folder."""

    root: Path

    @property
    def clip(self) -> Path:
        return self.root / "clip.mp4"

    @property
    def truth(self) -> Path:
        return self.root / "truth.npz"

    @property
    def info(self) -> Path:
        return self.root / "truth.json"


@dataclass(frozen=True)
class SynthConfig:
    """Generate a synthetic talking-head clip (astronaut photo on a 3D head) with ground truth."""

    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """Output folder (created; replaced if it exists)."""
    seed: int = 0
    """Random seed: the same seed gives the same clip."""
    seconds: float = 9.0
    """Clip length in seconds (25 fps)."""
    size: int = 512
    """Frame width and height in pixels."""
    device: str = "cpu"
    """Torch device that renders the frames ("cpu", "cuda", ...). Byte-identical output for a
    seed is promised on CPU; CUDA's atomic adds may change a pixel by one level."""


@dataclass(frozen=True)
class Motion:
    """Per-frame rigid motion of head and torso (N frames)."""

    R: np.ndarray  # [N, 3, 3] head-to-camera rotation
    t: np.ndarray  # [N, 3] head-to-camera translation (cm)
    torso_R: np.ndarray  # [N, 3, 3] torso rotation about the torso pivot (camera axes)
    torso_t: np.ndarray  # [N, 3] torso pivot position in camera space (cm)


def euler_to_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rz(roll) @ Ry(yaw) @ Rx(pitch) for angle arrays [N] (radians) -> [N, 3, 3]."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(-1, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def _smooth_wander(rng: np.random.Generator, n: int, fps: int, peak: float, f_lo: float, f_hi: float) -> np.ndarray:
    """A smooth zero-mean curve [n] of a few random sinusoids, scaled to max |value| = peak."""
    t = np.arange(n) / fps
    x = np.zeros(n)
    for _ in range(4):
        x += rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * rng.uniform(f_lo, f_hi) * t + rng.uniform(0, 2 * np.pi))
    x -= x.mean()
    return x * (peak / max(np.abs(x).max(), 1e-9))


def head_motion(rng: np.random.Generator, n: int, fps: int, t0: np.ndarray, envelope: np.ndarray) -> Motion:
    """Smooth yaw/pitch/roll within +/-15 deg, small translations, a nod with the syllables."""
    deg = np.pi / 180
    yaw = _smooth_wander(rng, n, fps, 12.0 * deg, 0.05, 0.35)
    pitch = _smooth_wander(rng, n, fps, 6.0 * deg, 0.05, 0.4) + 1.5 * deg * (envelope - envelope.mean())
    roll = _smooth_wander(rng, n, fps, 4.0 * deg, 0.05, 0.3)
    shift = np.stack(
        [_smooth_wander(rng, n, fps, p, 0.04, 0.25) for p in (1.2, 0.8, 2.0)], -1
    )  # [N, 3] cm
    R = euler_to_matrix(yaw, pitch, roll)
    t = t0[None] + shift
    # the torso follows loosely: a fraction of the head's yaw/roll and of its (slower) shift
    kernel = np.hanning(int(fps * 0.8)) / np.hanning(int(fps * 0.8)).sum()
    lag = np.stack([np.convolve(np.pad(shift[:, k], len(kernel), mode="edge"), kernel, "same")[len(kernel) : -len(kernel)] for k in range(3)], -1)
    torso_R = euler_to_matrix(0.3 * yaw, np.zeros(n), 0.25 * roll)
    torso_t = t0[None] + 0.6 * lag
    return Motion(R=R.astype(np.float32), t=t.astype(np.float32), torso_R=torso_R.astype(np.float32), torso_t=torso_t.astype(np.float32))


def blink_curve(rng: np.random.Generator, n: int, fps: int) -> np.ndarray:
    """Eye closure [n] in [0, 1]: a blink every 2.5-5 s (close 80 ms, hold 30 ms, open 150 ms)."""
    t = (np.arange(n) + 0.5) / fps
    out = np.zeros(n)
    start = rng.uniform(0.5, 2.5)
    close, hold, open_ = 0.08, 0.03, 0.15
    while start < n / fps:
        x = t - start
        shape = np.where(
            x < close,
            0.5 - 0.5 * np.cos(np.pi * np.clip(x / close, 0, 1)),
            np.where(x < close + hold, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip((x - close - hold) / open_, 0, 1))),
        )
        out = np.maximum(out, np.where((x >= 0) & (x <= close + hold + open_), shape, 0.0))
        start += rng.uniform(2.5, 5.0)
    return out.astype(np.float32)


def background_plate(rng: np.random.Generator, size: int) -> np.ndarray:
    """A studio-backdrop-like static background [size, size, 3] float32 in [0, 1]."""
    from scipy.ndimage import gaussian_filter, zoom

    yy, xx = np.mgrid[0:size, 0:size] / size
    top, bottom = np.array([0.30, 0.43, 0.52]), np.array([0.16, 0.24, 0.32])
    base = top * (1 - yy[..., None]) + bottom * yy[..., None]
    coarse = gaussian_filter(rng.standard_normal((16, 16, 1)), (1.5, 1.5, 0))
    mottle = zoom(coarse, (size / 16, size / 16, 1), order=1)[:size, :size]
    grain = gaussian_filter(rng.standard_normal((size, size, 1)), (1.0, 1.0, 0))
    vignette = 1.0 - 0.25 * ((xx - 0.5) ** 2 + (yy - 0.45) ** 2)[..., None]
    img = base * vignette + 0.05 * mottle / max(np.abs(mottle).max(), 1e-9) + 0.006 * grain
    return np.clip(img, 0, 1).astype(np.float32)


def _rot_x(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)


class SynthScene:
    """The whole clip, ready to render frame by frame; arrays are the ground truth.

    ``render(i)`` -> (rgb [H, W, 3] uint8, labels [H, W] uint8). Tensors live on ``device``.
    """

    def __init__(
        self, seed: int, num_frames: int, size: int, device: torch.device | str = "cpu", mesh: SubjectMesh | None = None
    ):
        if num_frames < 1:
            raise UserError(f"the clip needs at least one frame, got {num_frames}")
        if size < 64:
            raise UserError(f"frame size must be at least 64 pixels, got {size}")
        self.device = torch.device(device)
        self.num_frames, self.size, self.fps = int(num_frames), int(size), FPS
        rng = np.random.default_rng(seed)
        self.mesh: SubjectMesh = build_subject() if mesh is None else mesh
        self.speech: Speech = synth_speech(np.random.default_rng(rng.integers(2**63)), self.num_frames, FPS, AUDIO_RATE)
        f = FOCAL * size
        self.K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32)
        z0 = HEAD_DEPTH_CM
        t0 = np.array([0.0, (0.45 * size - size / 2) / f * z0, z0])
        self.motion = head_motion(np.random.default_rng(rng.integers(2**63)), self.num_frames, FPS, t0, self.speech.envelope)
        self.background = background_plate(np.random.default_rng(rng.integers(2**63)), size)
        self.jaw_angle = (self.speech.jaw * MAX_JAW_DEG * np.pi / 180).astype(np.float32)
        self.blink = blink_curve(np.random.default_rng(rng.integers(2**63)), self.num_frames, FPS)

        m = self.mesh
        dev = self.device
        self._verts = torch.from_numpy(m.verts).to(dev)
        self._faces = torch.from_numpy(m.faces).to(dev)
        self._uv = torch.from_numpy(m.uv).to(dev)
        self._jaw_w = torch.from_numpy(m.jaw_weight).to(dev)[:, None]
        self._blink = torch.from_numpy(m.blink_offset).to(dev)
        self._head_w = torch.from_numpy(m.head_weight).to(dev)[:, None]
        self._label = torch.from_numpy(m.label).to(dev)
        self._alpha_tested = torch.from_numpy(m.alpha_tested).to(dev)
        self._atlas = torch.from_numpy(m.atlas).to(dev)
        self._atlas_alpha = torch.from_numpy(m.atlas_alpha).to(dev)
        self._K = torch.from_numpy(self.K).to(dev)
        self._bg = torch.from_numpy(self.background).to(dev)
        light = torch.tensor([-0.35, -0.5, -1.0])
        self._light = (light / light.norm()).to(dev)

        # ground truth landmarks for every frame (cheap: 478 points)
        lm = m.verts[:NUM_LANDMARKS]
        self.canonical = lm.copy()
        posed = np.stack(
            [self._deform_np(lm + b * m.blink_offset[:NUM_LANDMARKS], m.jaw_weight[:NUM_LANDMARKS], a) for a, b in zip(self.jaw_angle, self.blink)]
        )  # [N, 478, 3]
        self.mouth_open = np.linalg.norm(posed[:, UPPER_INNER_LIP_MID] - posed[:, LOWER_INNER_LIP_MID], axis=-1).astype(np.float32)
        cam = np.einsum("nij,nvj->nvi", self.motion.R, posed) + self.motion.t[:, None]
        self.landmarks_cam = cam.astype(np.float32)
        proj = np.einsum("ij,nvj->nvi", self.K, cam)
        self.landmarks_2d = (proj[..., :2] / proj[..., 2:]).astype(np.float32)
        self.head_size = float(np.linalg.norm(np.ptp(lm, axis=0)))

    def _deform_np(self, x: np.ndarray, w: np.ndarray, angle: float) -> np.ndarray:
        p = self.mesh.jaw_pivot
        rotated = (x - p) @ _rot_x(angle).T + p
        return x + w[:, None] * (rotated - x)

    def posed_vertices(self, i: int) -> torch.Tensor:
        """Camera-space vertices [V, 3] of frame i (jaw, head and torso motion applied)."""
        dev = self.device
        p = torch.from_numpy(self.mesh.jaw_pivot).to(dev)
        rx = torch.from_numpy(_rot_x(float(self.jaw_angle[i]))).to(dev)
        v = self._verts + float(self.blink[i]) * self._blink
        v = v + self._jaw_w * (((v - p) @ rx.T + p) - v)
        head = v @ torch.from_numpy(self.motion.R[i]).to(dev).T + torch.from_numpy(self.motion.t[i]).to(dev)
        tp = torch.from_numpy(self.mesh.torso_pivot).to(dev)
        torso = (v - tp) @ torch.from_numpy(self.motion.torso_R[i]).to(dev).T + tp + torch.from_numpy(self.motion.torso_t[i]).to(dev)
        return self._head_w * head + (1 - self._head_w) * torso

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame i: rgb [H, W, 3] uint8 and labels [H, W] uint8."""
        s = self.size
        verts = self.posed_vertices(i)
        frags = synth_raster.rasterize(
            verts, self._faces, self._K, s, s, uv=self._uv, alpha=self._atlas_alpha, alpha_tested=self._alpha_tested
        )
        uv = synth_raster.interpolate(frags, self._faces, self._uv)
        albedo = synth_raster.sample_bilinear(self._atlas, uv)
        normals = synth_raster.vertex_normals(verts, self._faces)
        n = synth_raster.interpolate(frags, self._faces, normals)
        n = n / n.norm(dim=1, keepdim=True).clamp(min=1e-12)
        shade = 0.78 + 0.3 * (n @ self._light).clamp(min=0)
        rgb = self._bg.reshape(-1, 3).clone()
        rgb[frags.pixel] = (albedo * shade[:, None]).clamp(0, 1)
        labels = torch.zeros(s * s, dtype=torch.uint8, device=self.device)
        labels[frags.pixel] = self._label[frags.tri]
        rgb8 = (rgb * 255 + 0.5).to(torch.uint8).reshape(s, s, 3)
        return rgb8.cpu().numpy(), labels.reshape(s, s).cpu().numpy()

    @property
    def audio(self) -> np.ndarray:
        return self.speech.audio

    def truth_arrays(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Everything of TRUTH_KEYS, given the rendered label maps [N, H, W]."""
        return {
            "K": self.K,
            "R": self.motion.R,
            "t": self.motion.t,
            "canonical": self.canonical,
            "landmarks_cam": self.landmarks_cam,
            "landmarks_2d": self.landmarks_2d,
            "mouth_open": self.mouth_open,
            "jaw_angle": self.jaw_angle,
            "envelope": self.speech.envelope,
            "blink": self.blink,
            "labels": labels,
            "audio": self.speech.audio,
            "head_size": np.float32(self.head_size),
            "background": (self.background * 255 + 0.5).astype(np.uint8),
        }


def speech_audio(seed: int, seconds: float) -> np.ndarray:
    """Only the synthesised speech of ``seconds`` (a new sentence per seed): [S] float32, 16 kHz."""
    num_frames = max(1, int(round(seconds * FPS)))
    return synth_speech(np.random.default_rng(seed), num_frames, FPS, AUDIO_RATE).audio


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the enclosed torch work on ``n`` intra-op threads, then restore the previous count.

    The rasterizer's tensors are small (~10^5-10^6 elements): one thread is fastest, and several
    threads on a busy machine are many times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_truth(root: Path) -> dict[str, np.ndarray]:
    """The arrays of a synth folder's truth.npz."""
    path = SynthPaths(Path(root)).truth
    if not path.is_file():
        raise UserError(f"not an avatar3d synth folder (no truth.npz): {root}")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_synth(
    output: Path,
    seed: int = 0,
    seconds: float = 9.0,
    size: int = 512,
    device: torch.device | str = "cpu",
    mesh: SubjectMesh | None = None,
) -> dict:
    """Generate and write a synth folder atomically; returns the info written to truth.json.

    ``mesh``: a subject from :func:`build_subject` to reuse (it does not depend on the seed).
    """
    if not np.isfinite(seconds) or seconds <= 0 or seconds > 600:
        raise UserError(f"--seconds must be in (0, 600], got {seconds}")
    if size % 2 or not 64 <= size <= 2048:
        raise UserError(f"--size must be an even number of pixels in [64, 2048], got {size}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"--device {device!r} is not a torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"output exists and is not a folder: {output}")
    t_start = time.perf_counter()
    num_frames = max(1, int(round(seconds * FPS)))
    scene = SynthScene(seed, num_frames, size, dev, mesh=mesh)
    t_setup = time.perf_counter() - t_start
    work = work_dir_for(output)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    paths = SynthPaths(work)
    labels = np.zeros((num_frames, size, size), np.uint8)
    t_render = 0.0
    with torch_threads(1), VideoWriter(paths.clip, size, size, fps=FPS, crf=16, audio=scene.audio, audio_rate=AUDIO_RATE) as writer:
        for i in range(num_frames):
            t0 = time.perf_counter()
            rgb, labels[i] = scene.render(i)
            t_render += time.perf_counter() - t0
            writer.write(rgb)
    np.savez_compressed(paths.truth, **scene.truth_arrays(labels))
    info = {
        "config": {"seed": seed, "seconds": seconds, "size": size},
        "fps": FPS,
        "audio_rate": AUDIO_RATE,
        "num_frames": num_frames,
        "num_samples": int(len(scene.audio)),
        "samples_per_frame": SAMPLES_PER_FRAME,
        "labels": {label.name: int(label) for label in Label},
        "keys": TRUTH_KEYS,
        "head_size_cm": scene.head_size,
        "source": "scikit-image data.astronaut() (NASA, public domain) on a 3D head; audio synthesised",
        "seconds": {"setup": round(t_setup, 3), "render": round(t_render, 3), "total": round(time.perf_counter() - t_start, 3)},
    }
    write_json(paths.info, info)
    commit_dir(work, output)
    return info


def run_synth(config: SynthConfig) -> None:
    info = write_synth(config.output, seed=config.seed, seconds=config.seconds, size=config.size, device=config.device)
    paths = SynthPaths(Path(config.output))
    print(
        f"synth: {info['num_frames']} frames {config.size}x{config.size} in {info['seconds']['total']:.1f}s -> "
        f"{paths.clip} (+ {paths.truth.name}, {paths.info.name})"
    )

"""Training data of a Gaussian fit: the run's scene plus every frame cropped to the window.

The frames are kept in host RAM in one of two forms (:class:`FrameStore`), chosen by size:

- ``raw``: uint8 tensors, as the window holds them. For the CPU presets' small windows (a 20 s
  clip at 128² is 65 MB) and any clip whose raw frames fit ``FitParams.raw_frames_max_gb``.
- ``jpeg``: each frame's image and background as JPEG, its head and mouth masks as PNG, decoded
  when a step draws it. A 5-minute clip at 512² is about 1 GB this way instead of 15 GB raw.
  The frames are decoded from the dataset in a background thread while training runs: training
  starts once the first ``FitParams.stream_first_frames`` are in, and the training frames a step
  may draw from grow linearly with the step, to all of them at ``stream_all_by`` of the steps (a
  schedule of steps, not of time, so a fit is the same on any machine and resumes exactly); a
  step that draws a frame the thread has not reached yet waits for it.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatar3d.core.dataset import load_tracks, read_manifest
from avatar3d.core.scene import (
    Scene, Window, WindowCropper, WindowFrame, fit_neck_reach, head_window, iter_dataset_frames, load_scene, read_plate,
)
from avatar3d.core.vocab import RIGID_LANDMARKS
from avatar3d.drive.sync import mouth_opening
from avatar3d.errors import UserError
from avatar3d.gaussian.config import FitParams

JPEG_QUALITY = 95


class FrameStore:
    """The window frames of a clip in host RAM (see module docstring), filled in index order by
    :meth:`put` (from one thread) and read by :meth:`get` (which waits for a frame not yet put)."""

    def __init__(self, num: int, size: int, form: str):
        if form not in ("raw", "jpeg"):
            raise ValueError(f"unknown frame store form {form!r}")
        self.form = form
        self.num = num
        self._count = 0
        self._error: BaseException | None = None
        self._ready = threading.Condition()
        if form == "raw":
            self._images = torch.empty(num, size, size, 3, dtype=torch.uint8)
            self._backgrounds = torch.empty_like(self._images)
            self._head = torch.empty(num, size, size, dtype=torch.uint8)
            self._mouth = torch.empty_like(self._head)
        else:
            self._encoded: list[tuple[bytes, bytes, bytes] | None] = [None] * num

    @staticmethod
    def raw_bytes(num: int, size: int) -> int:
        """Host memory of ``num`` frames of ``size``² in raw form."""
        return num * size * size * (3 + 3 + 1 + 1)

    def put(self, i: int, frame: WindowFrame) -> None:
        """Store frame i (frames must arrive in order 0, 1, ...)."""
        if i != self._count:
            raise ValueError(f"frames must be put in order: expected {self._count}, got {i}")
        if self.form == "raw":
            self._images[i], self._backgrounds[i] = frame.image, frame.background
            self._head[i], self._mouth[i] = frame.head, frame.mouth
        else:
            import cv2

            def jpeg(rgb: torch.Tensor) -> bytes:
                ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb.numpy()[..., ::-1]),
                                       [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,  # full-resolution colour:
                                        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
                assert ok
                return buf.tobytes()

            masks = torch.stack([frame.head, frame.mouth, torch.zeros_like(frame.head)], -1).numpy()
            ok, png = cv2.imencode(".png", masks)
            assert ok
            self._encoded[i] = (jpeg(frame.image), jpeg(frame.background), png.tobytes())
        with self._ready:
            self._count = i + 1
            self._ready.notify_all()

    def fail(self, error: BaseException) -> None:
        """The loader could not go on: every later :meth:`get` of a missing frame raises ``error``."""
        with self._ready:
            self._error = error
            self._ready.notify_all()

    @property
    def count(self) -> int:
        """Frames stored so far (0 .. num)."""
        return self._count

    def wait(self, count: int) -> None:
        """Block until at least ``count`` frames are stored (re-raises the loader's error)."""
        with self._ready:
            while self._count < count:
                if self._error is not None:
                    raise self._error
                self._ready.wait()

    def get(self, i: int) -> WindowFrame:
        """Frame i, waiting for it if the loader has not reached it yet."""
        if not 0 <= i < self.num:
            raise IndexError(i)
        self.wait(i + 1)
        if self.form == "raw":
            return WindowFrame(self._images[i], self._backgrounds[i], self._head[i], self._mouth[i])
        import cv2

        image, background, masks = self._encoded[i]

        def decode(buf: bytes, flags: int) -> np.ndarray:
            return cv2.imdecode(np.frombuffer(buf, np.uint8), flags)

        rgb = lambda buf: torch.from_numpy(np.ascontiguousarray(decode(buf, cv2.IMREAD_COLOR)[..., ::-1]))  # noqa: E731
        m = torch.from_numpy(decode(masks, cv2.IMREAD_COLOR))  # [S, S, 3]: head, mouth, 0 (BGR order kept)
        return WindowFrame(rgb(image), rgb(background), m[..., 0].contiguous(), m[..., 1].contiguous())

    def nbytes(self) -> int:
        """Host memory the stored frames take."""
        if self.form == "raw":
            return sum(t.numel() for t in (self._images, self._backgrounds, self._head, self._mouth))
        return sum(sum(len(b) for b in e) for e in self._encoded if e is not None)


@dataclass(frozen=True, kw_only=True)
class FitData(Scene):
    """A :class:`Scene` with its frames cropped to the window (:class:`FrameStore`) and the
    canonical face with the mouth shut (:func:`closed_mouth_canonical`)."""

    frames: FrameStore
    canonical: torch.Tensor  # [478, 3] head-space cm
    first_frames: int  # training frames drawable at step 0 (all of them when not streamed)
    frames_per_step: float  # how many more become drawable per step

    def frame(self, i: int) -> WindowFrame:
        """Frame i in the window (uint8 on the CPU; waits while it is still being decoded)."""
        return self.frames.get(i)

    def drawable(self, step: int) -> int:
        """How many of the training frames (a prefix of ``train``) step ``step`` may draw from."""
        return min(len(self.train), self.first_frames + int(math.floor(step * self.frames_per_step)))


def load_fit_data(data_dir: Path, params: FitParams) -> FitData:
    """Read a dataset for a fit: its scene in the window ``params`` asks for, and its frames
    (eagerly in raw form, or streamed in JPEG form when the raw frames would not fit
    ``params.raw_frames_max_gb``; see module docstring)."""
    train = read_manifest(Path(data_dir)).frame_indices("train")  # UserError first when there is no dataset
    tracks = load_tracks(Path(data_dir))
    reach = fit_neck_reach(tracks["landmarks"], train, params.neck_margin) if "landmarks" in tracks else 0.0
    window = head_window(data_dir, params.window, params.head_margin, params.image_size, reach, tracks.get("landmarks"))
    scene = load_scene(data_dir, window, params.audio_features, tracks, reach)
    plate = read_plate(scene.data_dir, scene.frame_size)
    n, S = scene.num_frames, window.size
    form = params.frame_store
    if form == "auto":
        form = "raw" if FrameStore.raw_bytes(n, S) <= params.raw_frames_max_gb * 1024**3 else "jpeg"
    store = FrameStore(n, S, form)
    if form == "raw":  # every frame before the first step
        first, per_step = len(scene.train), 0.0
        _fill(store, scene, window, plate)
        store.wait(n)  # re-raises what stopped the fill
    else:  # the rest arrive while training runs
        first = min(len(scene.train), params.stream_first_frames)
        per_step = (len(scene.train) - first) / max(1.0, params.stream_all_by * params.steps)
        threading.Thread(target=_fill, args=(store, scene, window, plate), name="fit-frames", daemon=True).start()
        store.wait(int(scene.train[first - 1]) + 1)
    fields = {f: getattr(scene, f) for f in Scene.__dataclass_fields__}
    return FitData(**fields, frames=store, canonical=torch.from_numpy(closed_mouth_canonical(tracks, scene.train)),
                   first_frames=first, frames_per_step=per_step)


def _fill(store: FrameStore, scene: Scene, window: Window, plate: np.ndarray) -> None:
    """The loader thread: every dataset frame, cropped to the window, into ``store``."""
    try:
        crop = WindowCropper(window, plate, scene.neck_reach)
        for i, frame, labels in iter_dataset_frames(scene.data_dir):
            store.put(i, crop(frame, labels, scene.frame_landmarks(i)))
    except BaseException as exc:  # noqa: BLE001 - handed to the training thread
        store.fail(exc if isinstance(exc, UserError) else UserError(f"reading {scene.data_dir}: {exc}"))


CLOSED_MOUTH_PERCENTILE = 10.0  # frames with the lowest lip opening that shape the canonical face


def closed_mouth_canonical(tracks: dict, frames: np.ndarray) -> np.ndarray:
    """The dataset's canonical face with its mouth shut: ``[478, 3]`` float32 head-space cm.

    preprocess's canonical face is the clip's mean shape, so its lips are parted and the
    Gaussians would be seeded around an open mouth (BENCHMARKS.md, seed study: seeding them
    around a shut one raised val head PSNR).
    The non-rigid landmarks are replaced by their mean over the ``frames`` whose inner-lip opening
    is in the lowest ``CLOSED_MOUTH_PERCENTILE`` %: each such frame's tracked 2D landmark is
    back-projected at the depth its canonical point has in that frame's camera, into head space.
    The rigid landmarks (the head frame) are kept.
    """
    canonical = tracks["canonical"].astype(np.float64)  # [478, 3]
    opening = mouth_opening(tracks["landmarks"][frames])
    ok = np.isfinite(opening)
    if ok.sum() < 2:
        return canonical.astype(np.float32)
    shut = np.asarray(frames)[ok][opening[ok] <= np.percentile(opening[ok], CLOSED_MOUTH_PERCENTILE)]
    K = tracks["K"].astype(np.float64)
    R, t = tracks["R"][shut].astype(np.float64), tracks["t"][shut].astype(np.float64)  # [F, 3, 3], [F, 3]
    depth = np.einsum("fij,nj->fni", R, canonical)[..., 2] + t[:, None, 2]  # [F, 478] cm
    uv1 = np.concatenate([tracks["landmarks"][shut][..., :2], np.ones((len(shut), canonical.shape[0], 1))], -1)
    cam = (uv1 @ np.linalg.inv(K).T) * depth[..., None]  # [F, 478, 3] camera space
    head = np.einsum("fji,fnj->fni", R, cam - t[:, None, :])  # R^T (p - t)
    closed = head.mean(0)
    rigid = list(RIGID_LANDMARKS)
    closed[rigid] = canonical[rigid]
    return closed.astype(np.float32)

"""What the viewer computes, without the network: a run opened for viewing and one live stream.

::

    model = ViewerModel.open(run, device)          # shared by every session of a server
    session = ViewerSession(model)                 # one per browser tab
    session.start("mic")
    frames = session.push(pcm16k)                  # [S] float32 -> finished Frames (motion + picture)
    frames += session.end()                        # the last look-ahead frames

Motion: the run's prior (RUN/prior.pt, else the shipped one) through :class:`PriorStream`, the
offline prior's weights and 80 ms look-ahead computed incrementally, so a stream's motion codes
equal :func:`avatar3d.audio.prior.predict_motion` on the same audio (``tests/test_viewer.py``).

Picture: frame ``k`` is drawn exactly as ``avatar3d render`` draws its frame ``k``: the avatar
(any field, :func:`load_avatar`) at the fit window's resolution with the pose, eyes and brows of a
training frame (``--pose clip``'s back-and-forth walk over the first ``idle_frames`` training
frames; with idle motion off, the first one held), pasted over that frame's torso and background
(:class:`FrameBases`). The view adds what a viewer needs: expression sliders added to the motion
code, a head turned by yaw/pitch within the range seen in training, a zoom that crops around the
head, and an output resolution. At the dataset's own size, zoom 1, no turn and no sliders, a frame
is the offline render's frame of the same motion code, pixel for pixel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avatar3d.core.dataset import FPS
from avatar3d.core.scene import Window
from avatar3d.core.vocab import EXPRESSION_SLIDERS, SPEECH_CHANNELS, expression_offsets
from avatar3d.errors import UserError

RESOLUTIONS = (128, 256, 512, 1024)  # offered output sizes (plus the dataset's own), capped by it x 2
MIN_TURN_DEG, MAX_TURN_DEG = 10.0, 30.0
JAW = SPEECH_CHANNELS.index("jawOpen")


@dataclass(frozen=True)
class Frame:
    """One output frame of a stream."""

    k: int  # frame index since the stream's start (audio [640 k, 640 (k + 1)) samples)
    motion: np.ndarray  # [28] the prior's speech channels (SPEECH_CHANNELS order)
    jpeg: bytes = b""  # the picture, or b"" when not drawn
    width: int = 0
    height: int = 0
    render_ms: float = 0.0
    beyond_training: bool = False  # the head is turned further than the training frames ever were
    draw: dict | None = None  # browser render mode: what the page draws the frame from (FrameParams.to_json)

    @property
    def t(self) -> float:
        """Audio time of the frame's start, seconds."""
        return self.k / FPS

    def header(self, dropped: int = 0) -> dict:
        """The frame's JSON header on the wire (viewer/PROTOCOL.md)."""
        return {
            "k": self.k, "t": round(self.t, 6), "motion": [round(float(v), 5) for v in self.motion],
            "jaw": round(float(self.motion[JAW]), 5), "render_ms": round(self.render_ms, 2),
            "width": self.width, "height": self.height, "dropped": dropped, "beyond_training": self.beyond_training,
            **({"draw": self.draw} if self.draw is not None else {}),
        }


@dataclass
class View:
    """How a session looks at the avatar (what ``control`` messages change)."""

    resolution: int
    expression: dict[str, float] = field(default_factory=dict)
    yaw: float = 0.0  # degrees, clamped to the model's limit
    pitch: float = 0.0
    zoom: float = 1.0
    idle_motion: bool = True
    paused: bool = False
    render: str = "server"  # "server": frames come as JPEGs; "browser": the page draws the baked avatar


def turn_limits(R: np.ndarray) -> tuple[float, float]:
    """How far (degrees) the head may be turned in yaw and pitch: the spread of the training
    poses ``R`` [T, 3, 3] around their mean rotation, clamped to [10, 30] degrees."""
    from scipy.spatial.transform import Rotation

    rots = Rotation.from_matrix(R)
    rel = (rots.mean().inv() * rots).as_rotvec(degrees=True)  # [T, 3]: x = pitch, y = yaw
    spread = np.abs(rel).max(0) if len(rel) else np.zeros(3)
    clamp = lambda v: float(np.clip(v, MIN_TURN_DEG, MAX_TURN_DEG))  # noqa: E731
    return clamp(spread[1]), clamp(spread[0])


def turned(R: torch.Tensor, yaw: float, pitch: float) -> torch.Tensor:
    """Head rotation ``R`` [3, 3] with the head turned by yaw (about its vertical axis) and pitch."""
    from scipy.spatial.transform import Rotation

    if yaw == 0 and pitch == 0:
        return R
    turn = Rotation.from_rotvec(np.radians([pitch, yaw, 0.0])).as_matrix().astype(np.float32)
    return R @ torch.from_numpy(turn)


@dataclass(frozen=True)
class Layout:
    """Where things land in an output frame: the crop of the dataset frame it shows and the
    head window inside it (output pixels). Pure geometry, see :meth:`ViewerModel.layout`."""

    crop: tuple[int, int, int]  # x0, y0, side in dataset pixels
    head: Window  # the head's square in output pixels, drawn at head.size
    resolution: int


@dataclass(frozen=True)
class FrameParams:
    """Everything output frame ``k`` is drawn from (:meth:`ViewerModel.frame_params`): the server
    draws it (:meth:`ViewerModel.draw_params`), or, in browser render mode, sends it to the page
    that draws the baked avatar itself (``draw`` in the frame header, viewer/PROTOCOL.md)."""

    base: int  # position in the model's loop (= the web file's frames): pose trajectory, torso and background
    code: np.ndarray  # [52] the full motion code (prior's speech channels, tracked rest, sliders)
    R: np.ndarray  # [3, 3] head rotation, turned by the view
    t: np.ndarray  # [3] head translation (cm)
    layout: Layout

    def to_json(self) -> dict:
        lay = self.layout
        return {"base": self.base, "code": [round(float(v), 6) for v in self.code],
                "R": [round(float(v), 7) for v in self.R.reshape(-1)], "t": [round(float(v), 6) for v in self.t],
                "crop": list(lay.crop), "head": [lay.head.x0, lay.head.y0, lay.head.side, lay.head.size],
                "resolution": lay.resolution}

    @staticmethod
    def from_json(obj: dict) -> "FrameParams":
        x, y, side, size = obj["head"]
        layout = Layout(tuple(obj["crop"]), Window(x, y, side, size), int(obj["resolution"]))
        return FrameParams(int(obj["base"]), np.asarray(obj["code"], np.float32),
                           np.asarray(obj["R"], np.float32).reshape(3, 3), np.asarray(obj["t"], np.float32), layout)


class ViewerModel:
    """A run opened for viewing: avatar, scene, prior and composite bases, shared by sessions."""

    def __init__(self, run: Path, device: torch.device, idle_frames: int = 250, jpeg_quality: int = 85):
        from avatar3d.audio.prior import PriorStream
        from avatar3d.core.avatar import load_avatar
        from avatar3d.core.runs import open_run
        from avatar3d.core.scene import load_run_scene
        from avatar3d.drive.render import FrameBases, load_run_prior
        from avatar3d.drive.seams import PoseRange

        if idle_frames < 1:
            raise UserError(f"--idle-frames must be >= 1, got {idle_frames}")
        info = open_run(run)
        self.run, self.field, self.device = info.run, info.field, torch.device(device)
        self.avatar = load_avatar(info.run, self.device)
        if self.avatar.audio_features:
            raise UserError(
                f"run {info.run} listens to audio features {self.avatar.audio_features!r} besides the motion "
                "code; the viewer drives motion-only avatars (fit without --params.audio-features)"
            )
        self.scene = load_run_scene(info, "")
        self.prior, self.prior_path = load_run_prior(info.run, "cpu")
        PriorStream(self.prior)  # UserError now, not per session, when its encoder cannot stream
        self.loop = self.scene.train[:idle_frames]  # [L] dataset frames the idle motion walks
        size = self.scene.frame_size
        self.bases = FrameBases(self.scene, self.loop)
        self.yaw_limit, self.pitch_limit = turn_limits(self.scene.R[self.loop].numpy())
        self.pose_range = PoseRange(self.scene.R[self.scene.train].numpy())
        w = self.scene.window
        self.zoom_limit = float(max(1.0, min(4.0, size / w.side)))
        self.resolutions = tuple(sorted({r for r in RESOLUTIONS if r <= 2 * size} | {size}))
        self.jpeg_quality = int(jpeg_quality)
        self.expressions = tuple(EXPRESSION_SLIDERS)
        self.browser_unavailable = (
            None if self.field == "gaussian" else f"a {self.field!r} field cannot be baked for the browser")

    def web_pack(self) -> Path:
        """The avatar baked for browser render mode (RUN/viewer.a3dw, :mod:`avatar3d.gaussian.webpack`),
        its frames this model's loop. Baked on first use (seconds to a minute on a CPU) and again
        when the avatar was fitted anew or the loop differs; UserError where it cannot be baked."""
        from avatar3d.core.runs import RunPaths
        from avatar3d.fsutil import atomic_path
        from avatar3d.gaussian.webpack import build_pack, read_header, write_pack

        if self.browser_unavailable:
            raise UserError(self.browser_unavailable)
        paths = RunPaths(self.run)
        path = paths.viewer_pack
        if path.is_file() and path.stat().st_mtime >= paths.avatar_weights.stat().st_mtime:
            try:
                if read_header(path)["frames"]["index"] == [int(i) for i in self.loop]:
                    return path
            except (UserError, KeyError, TypeError):
                pass  # stale or damaged: bake again
        print(f"avatar3d view: baking the avatar for browser render mode into {path} (once)", flush=True)
        header, arrays, _ = build_pack(self.avatar, self.scene, self.run.name, np.asarray(self.loop),
                                       jpeg_quality=self.jpeg_quality)
        with atomic_path(path) as tmp:
            write_pack(tmp, header, arrays)
        return path

    # -- pure parts ------------------------------------------------------------------------

    def trajectory_position(self, k: int, idle_motion: bool) -> int:
        """Output frame ``k``'s position in the loop (the idle motion's back-and-forth walk)."""
        from avatar3d.drive.render import ping_pong_at

        return int(ping_pong_at(np.array([k]), len(self.loop))[0]) if idle_motion else 0

    def trajectory_frame(self, k: int, idle_motion: bool) -> int:
        """The dataset frame giving output frame ``k`` its pose and torso."""
        return int(self.loop[self.trajectory_position(k, idle_motion)])

    def layout(self, view: View) -> Layout:
        """The crop (zoomed around the head window) and the head's square in output pixels. The
        head is drawn at the fit's resolution, or at its output size when that is smaller."""
        size, w, res = self.scene.frame_size, self.scene.window, view.resolution
        zoom = min(max(view.zoom, 1.0), self.zoom_limit)
        side = int(round(size / zoom))
        cx, cy = w.x0 + w.side / 2, w.y0 + w.side / 2
        x0 = int(round(min(max(cx - side / 2, 0), size - side)))
        y0 = int(round(min(max(cy - side / 2, 0), size - side)))
        s = res / side
        head_side = min(res, int(round(w.side * s)))
        hx = min(max(int(round((w.x0 - x0) * s)), 0), res - head_side)
        hy = min(max(int(round((w.y0 - y0) * s)), 0), res - head_side)
        return Layout((x0, y0, side), Window(hx, hy, head_side, max(8, min(w.size, head_side))), res)

    def blendshapes(self, motion: np.ndarray, frame: int, expression: dict[str, float]) -> torch.Tensor:
        """The full motion code of one output frame: the prior's speech channels ``motion`` [28]
        over the trajectory frame's tracked code, plus the expression sliders. [1, 52]"""
        from avatar3d.audio.prior import blendshapes_from_motion

        bs = blendshapes_from_motion(motion[None], base=self.scene.motion[frame].numpy())[0]
        if expression:
            bs = np.clip(bs + expression_offsets(expression), 0.0, 1.0)
        return torch.from_numpy(bs[None].astype(np.float32))

    # -- drawing ---------------------------------------------------------------------------

    def frame_params(self, k: int, motion: np.ndarray, view: View) -> FrameParams:
        """What output frame ``k`` of motion ``motion`` [28] is drawn from, as ``view`` shows it."""
        j = self.trajectory_position(k, view.idle_motion)
        i = int(self.loop[j])
        code = self.blendshapes(motion, i, view.expression)[0].numpy()
        return FrameParams(j, code, self.head_pose(k, view).numpy(), self.scene.t[i].numpy(), self.layout(view))

    def draw(self, k: int, motion: np.ndarray, view: View) -> np.ndarray:
        """Output frame ``k`` of motion ``motion`` [28] as ``view`` shows it: [R, R, 3] uint8 RGB."""
        return self.draw_params(self.frame_params(k, motion, view))

    @torch.inference_mode()
    def draw_params(self, p: FrameParams) -> np.ndarray:
        """The frame ``p`` describes: [R, R, 3] uint8 RGB."""
        import cv2

        from avatar3d.core.avatar import Conditioning
        from avatar3d.core.camera import Camera
        from avatar3d.drive.render import paste

        lay, w = p.layout, self.scene.window
        camera = Camera.from_pose(self.scene.K, p.R, p.t, w.size, w.size, self.device)
        if lay.head.size != w.size:
            camera = camera.crop_resize(0, 0, w.size, lay.head.size)
        cond = Conditioning(torch.from_numpy(np.asarray(p.code, np.float32)[None])).to(self.device)
        rgba = self.avatar.render(cond, camera).cpu()
        base = self.bases[int(self.loop[p.base])].image
        x0, y0, side = lay.crop
        if (x0, y0, side) != (0, 0, self.scene.frame_size) or lay.resolution != side:
            base = base[y0 : y0 + side, x0 : x0 + side]
            interp = cv2.INTER_AREA if lay.resolution < side else cv2.INTER_LINEAR
            base = cv2.resize(base, (lay.resolution, lay.resolution), interpolation=interp)
        return paste(rgba, base, lay.head)

    def head_pose(self, k: int, view: View) -> torch.Tensor:
        """The head rotation output frame ``k`` is drawn with: its trajectory frame's, turned by
        the view's yaw and pitch (clamped to the limits). [3, 3]"""
        i = self.trajectory_frame(k, view.idle_motion)
        return turned(self.scene.R[i], max(-self.yaw_limit, min(self.yaw_limit, view.yaw)),
                      max(-self.pitch_limit, min(self.pitch_limit, view.pitch)))

    def beyond_training(self, R: torch.Tensor) -> bool:
        """Whether head rotation ``R`` [3, 3] is turned further than the training frames ever were
        (the field extrapolates there; the page says so)."""
        return bool(self.pose_range.outside(R.numpy()[None])[0])

    def encode(self, image: np.ndarray) -> bytes:
        """RGB uint8 -> JPEG bytes at the server's quality."""
        import cv2

        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()

    def ready(self) -> dict:
        """What the ``ready`` message tells a client about this model (viewer/PROTOCOL.md)."""
        from avatar3d.viewer import protocol as P

        return {
            "protocol": P.PROTOCOL_VERSION, "sample_rate": P.SAMPLE_RATE, "chunk_samples": P.CHUNK_SAMPLES,
            "fps": FPS, "lookahead_frames": self.prior.lookahead, "frame_size": self.scene.frame_size,
            "resolutions": list(self.resolutions), "expressions": list(self.expressions),
            "yaw_limit": round(self.yaw_limit, 2), "pitch_limit": round(self.pitch_limit, 2),
            "zoom_limit": round(self.zoom_limit, 3), "run": self.run.name, "field": self.field,
            "device": str(self.device), "motion_channels": list(SPEECH_CHANNELS),
            "renders": ["server"] + ([] if self.browser_unavailable else ["browser"]),
        }


class ViewerSession:
    """One live stream (a browser tab): its prior state, frame counter and view. Not thread-safe:
    the server calls one session from one task at a time."""

    def __init__(self, model: ViewerModel):
        self.model = model
        self.view = View(resolution=model.scene.frame_size)  # one of model.resolutions
        self.mode: str | None = None
        self._stream = None
        self._next_k = 0

    @property
    def started(self) -> bool:
        return self._stream is not None

    @property
    def frames_out(self) -> int:
        return self._next_k

    def start(self, mode: str) -> None:
        """A new stream: audio time 0, the prior's state as offline inference starts a clip."""
        from avatar3d.audio.prior import PriorStream

        self._stream, self._next_k, self.mode = PriorStream(self.model.prior), 0, mode

    def push(self, samples: np.ndarray, draw: str = "newest") -> list[Frame]:
        """Feed 16 kHz audio ``[S]`` float32; the frames it finishes. ``draw``: "newest" (only the
        last finished frame gets a picture: a live stream that fell behind catches up), "all",
        or "none"."""
        if self._stream is None:
            raise UserError("audio before start")
        return self._frames(self._stream.push(np.asarray(samples, np.float32)), draw)

    def end(self, draw: str = "all") -> list[Frame]:
        """End of stream: the last look-ahead frames (silence after the end, as offline)."""
        if self._stream is None:
            return []
        frames = self._frames(self._stream.flush(), draw)
        self._stream = None
        return frames

    def _frames(self, motion: np.ndarray, draw: str) -> list[Frame]:
        out = []
        for j, m in enumerate(motion):
            k = self._next_k
            self._next_k += 1
            if self.view.paused or draw == "none" or (draw == "newest" and j < len(motion) - 1):
                out.append(Frame(k, m))
                continue
            t0 = time.perf_counter()
            params = self.model.frame_params(k, m, self.view)
            beyond = self.model.beyond_training(torch.from_numpy(params.R))
            if self.view.render == "browser":
                out.append(Frame(k, m, render_ms=(time.perf_counter() - t0) * 1e3, beyond_training=beyond,
                                 draw=params.to_json()))
                continue
            image = self.model.draw_params(params)
            jpeg = self.model.encode(image)
            out.append(Frame(k, m, jpeg, image.shape[1], image.shape[0], (time.perf_counter() - t0) * 1e3, beyond))
        return out

    def control(self, change) -> None:
        """Apply a :class:`avatar3d.viewer.protocol.Control` (fields left None stay)."""
        v = self.view
        if change.expression is not None:
            v.expression = {k: x for k, x in change.expression.items() if x}
        for name in ("yaw", "pitch", "zoom", "resolution", "idle_motion", "paused", "render"):
            value = getattr(change, name)
            if value is not None:
                setattr(v, name, value)
        v.yaw = max(-self.model.yaw_limit, min(self.model.yaw_limit, v.yaw))
        v.pitch = max(-self.model.pitch_limit, min(self.model.pitch_limit, v.pitch))
        v.zoom = max(1.0, min(self.model.zoom_limit, v.zoom))


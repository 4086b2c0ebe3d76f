"""Video and audio file I/O through PyAV: the one place that talks to containers and codecs.

Frames are ``[H, W, 3] uint8`` RGB arrays, upright and SDR (a display rotation is applied and HLG
or PQ video is converted: :mod:`avatar3d.core.picture`); audio is ``[S] float32`` mono in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from avatar3d.errors import UserError


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds. ``fps``/``width``/``height``/``num_frames`` are 0 without video."""

    path: Path
    has_video: bool
    has_audio: bool
    fps: float
    width: int
    height: int
    num_frames: int
    duration: float  # seconds, of the longest stream
    audio_rate: int
    start: float = 0.0  # container start time, seconds
    video_start: float = 0.0  # first video timestamp, seconds (0 without video)
    video_duration: float = 0.0  # seconds covered by the video stream (0 if unknown)
    audio_start: float = 0.0  # first audio timestamp, seconds (0 without audio)
    audio_duration: float = 0.0  # seconds covered by the audio stream (0 if unknown)
    picture: dict | None = None  # what decoding does to the frames (PictureConverter.describe); None without video


def open_media(path: Path):
    """Open a media file with PyAV; a UserError for a missing, empty or unreadable file."""
    import av

    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if path.is_dir():
        raise UserError(f"expected a media file, got a folder: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"empty file: {path}")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        with open(path, "rb") as f:
            head = f.read(12)
        if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):  # an ISO-BMFF (mp4/mov) file
            raise UserError(
                f"{path} is a truncated or corrupt mp4/mov (its index cannot be read): {exc}"
            ) from None
        raise UserError(
            f"cannot read {path} as video/audio (corrupt or not a media file): {exc}"
        ) from None


def _stream_span(stream) -> tuple[float, float]:
    """(start, duration) of a stream in seconds; 0 where the container does not say."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    dur = float(stream.duration * tb) if stream.duration is not None and tb else 0.0
    return start, dur


def probe(path: Path) -> MediaInfo:
    """Container-level facts about ``path``; raises UserError if it is not a readable media file.
    ``width``/``height`` are the upright frame's (a display rotation of 90/270 degrees swaps them):
    the first frame is decoded to learn its orientation and transfer."""
    with open_media(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        duration = float(c.duration / 1_000_000) if c.duration else 0.0
        fps = float(v.average_rate or v.guessed_rate or 0) if v is not None else 0.0
        num_frames = int(v.frames) if v is not None and v.frames else 0
        if v is not None and not num_frames and duration and fps:
            num_frames = int(round(duration * fps))
        v_start, v_dur = _stream_span(v) if v is not None else (0.0, 0.0)
        a_start, a_dur = _stream_span(a) if a is not None else (0.0, 0.0)
        if v is not None and not v_dur and num_frames and fps:
            v_dur = num_frames / fps
        start = float(c.start_time / 1_000_000) if c.start_time is not None else 0.0
        width = int(v.codec_context.width) if v is not None else 0
        height = int(v.codec_context.height) if v is not None else 0
        converter = _first_converter(c, v) if v is not None else None
        if converter is not None and converter.orientation.swaps_size:
            width, height = height, width
        return MediaInfo(
            path=Path(path),
            has_video=v is not None,
            has_audio=a is not None,
            fps=fps,
            width=width,
            height=height,
            num_frames=num_frames,
            duration=duration,
            audio_rate=int(a.codec_context.sample_rate) if a is not None else 0,
            start=start,
            video_start=v_start,
            video_duration=v_dur,
            audio_start=a_start,
            audio_duration=a_dur,
            picture=converter.describe() if converter is not None else None,
        )


def _first_converter(container, stream):
    """The PictureConverter of ``stream`` from its first decodable frame (None if none decodes)."""
    import av

    from avatar3d.core.picture import PictureConverter

    try:
        for frame in container.decode(stream):
            return PictureConverter.of(frame)
    except av.error.FFmpegError:
        return None  # the decode stage reports a corrupt stream with its own message
    return None


def iter_frames(path: Path) -> Iterator[np.ndarray]:
    """Decode every video frame of ``path`` as ``[H, W, 3] uint8`` RGB, in order."""
    for _, frame in iter_timed_frames(path):
        yield frame


def iter_timed_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """Decode every video frame of ``path`` as ``(time in seconds, [H, W, 3] uint8 RGB)``, upright
    and SDR (:class:`avatar3d.core.picture.PictureConverter`, set from the first frame)."""
    import av

    from avatar3d.core.picture import PictureConverter

    with open_media(path) as c:
        if not c.streams.video:
            raise UserError(f"no video stream in {path}")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        k = 0
        convert = None
        # bound now: a generator closed at interpreter exit must not look up `av`
        decode_error = av.error.FFmpegError
        try:
            for frame in c.decode(stream):
                t = float(frame.pts * tb) if frame.pts is not None else k / fps
                convert = convert or PictureConverter.of(frame)
                yield t, convert(frame)
                k += 1
        except decode_error as exc:
            raise UserError(f"video {path} is corrupt or truncated: {exc}") from None


def read_frames_at(path: Path, times: Iterable[float]) -> list[tuple[float, np.ndarray]]:
    """The frames shown at each of ``times`` (seconds, increasing), found by seeking.

    Returns ``(frame time, [H, W, 3] uint8)`` per requested time (the last frame at or before it,
    or the first frame for times before the start). Cheap for a few frames of a long clip.
    """
    import av

    from avatar3d.core.picture import PictureConverter

    out: list[tuple[float, np.ndarray]] = []
    convert = None
    with open_media(path) as c:
        if not c.streams.video:
            raise UserError(f"no video stream in {path}")
        stream = c.streams.video[0]
        tb = stream.time_base
        try:
            for target in times:
                c.seek(max(0, int(target / tb)), stream=stream, backward=True, any_frame=False)
                best = None
                for frame in c.decode(stream):
                    if frame.pts is None:
                        continue
                    ft = float(frame.pts * tb)
                    if best is not None and ft > target + 1e-6:
                        break
                    best = (ft, frame)
                    if ft >= target - 1e-6:
                        break
                if best is not None:
                    convert = convert or PictureConverter.of(best[1])
                    out.append((best[0], convert(best[1])))
        except av.error.FFmpegError as exc:
            raise UserError(f"video {path} is corrupt or truncated: {exc}") from None
    return out


def read_frames(path: Path) -> np.ndarray:
    """All frames of ``path``: ``[N, H, W, 3] uint8``. Mind the memory for long clips."""
    frames = list(iter_frames(path))
    if not frames:
        raise UserError(f"no decodable video frames in {path}")
    return np.stack(frames)


def write_wav(path: Path, audio: np.ndarray, rate: int = 16_000) -> None:
    """``[S]`` float audio in [-1, 1] -> mono 16-bit PCM wav (clipped, rounded), atomically."""
    import soundfile as sf

    from avatar3d.fsutil import atomic_path

    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    with atomic_path(Path(path)) as tmp:
        sf.write(str(tmp), pcm, rate, subtype="PCM_16", format="WAV")


def read_audio(path: Path, rate: int = 16_000) -> np.ndarray:
    """Decode the first audio stream of ``path``, downmixed to mono and resampled: ``[S] float32``."""
    import av

    with open_media(path) as c:
        if not c.streams.audio:
            raise UserError(f"no audio track in {path}")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in c.decode(c.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise UserError(f"audio in {path} is corrupt or truncated: {exc}") from None
    if not chunks:
        raise UserError(f"audio track of {path} is empty")
    return np.concatenate(chunks).astype(np.float32)


class VideoWriter:
    """Write RGB frames to an H.264 mp4 (optionally with an AAC track) through PyAV.

    Use as a context manager; ``write(frame)`` takes ``[H, W, 3] uint8``. ``crf`` 0-51, lower is
    better quality (18 is visually lossless for most content); ``preset`` is x264's speed/size
    trade-off (ultrafast ... veryslow).
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: int = 25,
        crf: int = 18,
        audio: np.ndarray | None = None,
        audio_rate: int = 16_000,
        pix_fmt: str = "yuv420p",
        preset: str = "medium",
    ):
        import av

        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w")
        self._video = self._container.add_stream("libx264", rate=Fraction(fps))
        self._video.width, self._video.height = int(width), int(height)
        self._video.pix_fmt = pix_fmt
        self._video.options = {"crf": str(crf), "preset": preset}
        self._audio_data = audio
        self._audio_rate = audio_rate
        self._astream = None
        if audio is not None:
            self._astream = self._container.add_stream("aac", rate=audio_rate)
            self._astream.layout = "mono"

    def write(self, frame: np.ndarray) -> None:
        import av

        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._video.encode(vf):
            self._container.mux(packet)

    def close(self) -> None:
        import av

        for packet in self._video.encode():
            self._container.mux(packet)
        if self._astream is not None:
            samples = np.clip(np.asarray(self._audio_data, np.float32), -1, 1)
            chunk = 1024
            pts = 0
            for start in range(0, len(samples), chunk):
                block = samples[start : start + chunk].reshape(1, -1)
                af = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
                af.sample_rate = self._audio_rate
                af.pts = pts
                pts += block.shape[1]
                for packet in self._astream.encode(af):
                    self._container.mux(packet)
            for packet in self._astream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self._container.close()
            except Exception:
                pass


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: int = 25,
    crf: int = 18,
    audio: np.ndarray | None = None,
    audio_rate: int = 16_000,
) -> int:
    """Write frames (and optional mono audio) to ``path``; returns the number of frames written."""
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    h, w = first.shape[:2]
    n = 0
    with VideoWriter(path, w, h, fps=fps, crf=crf, audio=audio, audio_rate=audio_rate) as writer:
        writer.write(first)
        n += 1
        for frame in it:
            writer.write(frame)
            n += 1
    return n

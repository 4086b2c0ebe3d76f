"""Semantic label maps on disk: masks.mkv, lossless FFV1 gray8 in Matroska.

One ``[H, W] uint8`` label map per frame (values of :class:`avatar3d.core.dataset.Label`), stored
as an 8-bit grey video. FFV1 is lossless, so what :func:`read_masks` returns is bit-identical
to what :class:`MaskWriter` was given; label maps are mostly flat regions, so a minute of
512x512 masks takes well under a megabyte.

Writers go through :func:`avatar3d.fsutil.atomic_path`: a crash leaves no half-written file.
"""
from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from avatar3d.core.dataset import FPS, Label
from avatar3d.errors import UserError
from avatar3d.fsutil import atomic_path
from avatar3d.core.video import open_media

MAX_LABEL = max(Label)


class MaskWriter:
    """Stream ``[H, W] uint8`` label maps into an FFV1 gray8 .mkv, atomically.

    Use as a context manager: the file appears at ``path`` only when the block exits without
    an exception.
    """

    def __init__(self, path: Path, width: int, height: int, fps: int = FPS):
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.num_frames = 0
        self._stack: contextlib.ExitStack | None = None
        self._container = None
        self._stream = None

    def __enter__(self) -> "MaskWriter":
        import av

        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._container = av.open(str(tmp), mode="w", format="matroska")
        self._stream = self._container.add_stream("ffv1", rate=Fraction(self.fps))
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "gray"
        # Slices let FFV1 use threads; level 3 is the current, checksummed bitstream.
        self._stream.options = {"level": "3", "slices": "4", "slicecrc": "1", "g": "1"}
        return self

    def write(self, labels: np.ndarray) -> None:
        """Append one label map ``[H, W] uint8``."""
        import av

        labels = np.asarray(labels)
        if labels.shape != (self.height, self.width) or labels.dtype != np.uint8:
            raise ValueError(
                f"mask must be [{self.height}, {self.width}] uint8, got {labels.shape} {labels.dtype}"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(labels), format="gray")
        frame.pts = self.num_frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.num_frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._stack is not None
        try:
            if exc_type is None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
        except BaseException as close_exc:
            self._stack.__exit__(type(close_exc), close_exc, close_exc.__traceback__)
            raise
        self._stack.__exit__(exc_type, exc, tb)


def write_masks(path: Path, masks: Iterable[np.ndarray], fps: int = FPS) -> int:
    """Write label maps (an ``[N, H, W]`` array or any iterable of ``[H, W]``); returns N."""
    it = iter(masks)
    first = next(it, None)
    if first is None:
        raise ValueError("no masks to write")
    h, w = np.asarray(first).shape[:2]
    with MaskWriter(path, w, h, fps=fps) as writer:
        writer.write(first)
        for m in it:
            writer.write(m)
    return writer.num_frames


def iter_masks(path: Path) -> Iterator[np.ndarray]:
    """Decode masks.mkv frame by frame: ``[H, W] uint8`` label maps, in order."""
    import av

    path = Path(path)
    with open_media(path) as c:
        if not c.streams.video:
            raise UserError(f"no mask stream in {path}")
        stream = c.streams.video[0]
        if stream.codec_context.name != "ffv1":
            raise UserError(f"{path} is not an avatar3d mask file (codec {stream.codec_context.name})")
        stream.thread_type = "AUTO"
        # bound now: a generator closed at interpreter exit must not look up `av`
        decode_error = av.error.FFmpegError
        try:
            for frame in c.decode(stream):
                if frame.format.name != "gray":
                    raise UserError(f"{path} is not an avatar3d mask file (pixel format {frame.format.name})")
                labels = frame.to_ndarray()
                yield labels.reshape(frame.height, frame.width)
        except decode_error as exc:
            raise UserError(f"mask file {path} is corrupt or truncated: {exc}") from None


def read_masks(path: Path) -> np.ndarray:
    """All label maps of masks.mkv: ``[N, H, W] uint8``."""
    masks = list(iter_masks(path))
    if not masks:
        raise UserError(f"no masks in {path}")
    return np.stack(masks)

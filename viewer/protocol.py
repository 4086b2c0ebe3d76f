"""The viewer's wire protocol (version 1): limits, message checks and the frame layout.

The rules are written down for people in ``viewer/PROTOCOL.md``; this module is their one
implementation on the server. Everything a client sends passes :func:`parse_text` or
:func:`parse_audio` first; both raise :class:`ProtocolError` (a one-line reason sent back to that
client as an ``error`` message) and never anything else.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 320  # what the page sends: 20 ms
MAX_AUDIO_BYTES = 65_536  # one binary message (about 2 s of audio)
MAX_TEXT_BYTES = 4_096  # one text message
MAX_FRAME_QUEUE = 8  # frames waiting to be sent to one client; older ones are dropped
MODES = ("mic", "file")
RENDERS = ("server", "browser")  # who draws the frames: the server (JPEGs) or the page (the baked avatar)
ZOOM_LIMIT = 4.0


class ProtocolError(Exception):
    """A message that breaks the protocol; the text goes back to the client as an ``error``."""


@dataclass(frozen=True)
class Start:
    mode: str


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class Ping:
    t: float


@dataclass(frozen=True)
class Control:
    """A view change; ``None`` = leave as it is."""

    expression: dict[str, float] | None = None
    yaw: float | None = None
    pitch: float | None = None
    zoom: float | None = None
    resolution: int | None = None
    idle_motion: bool | None = None
    paused: bool | None = None
    render: str | None = None


Message = Start | End | Ping | Control


def _number(msg: dict, key: str, lo: float, hi: float) -> float | None:
    if key not in msg:
        return None
    v = msg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(f"{key} must be a number, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError(f"{key} must be in [{lo:g}, {hi:g}], got {v:g}")
    return float(v)


def _flag(msg: dict, key: str) -> bool | None:
    if key not in msg:
        return None
    if not isinstance(msg[key], bool):
        raise ProtocolError(f"{key} must be true or false, got {type(msg[key]).__name__}")
    return msg[key]


def parse_text(data: str, expressions: tuple[str, ...], resolutions: tuple[int, ...]) -> Message:
    """A client's text message -> the message it asks for (ProtocolError when it breaks a rule).

    ``expressions`` and ``resolutions`` are what this server offers (``ready`` tells the client)."""
    if len(data.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise ProtocolError(f"text message over {MAX_TEXT_BYTES} bytes")
    try:
        msg = json.loads(data)
    except ValueError:
        raise ProtocolError("text message is not JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'")
    if kind == "start":
        if msg.get("mode") not in MODES:
            raise ProtocolError(f"start needs mode {' or '.join(MODES)}, got {msg.get('mode')!r}")
        return Start(msg["mode"])
    if kind == "end":
        return End()
    if kind == "ping":
        return Ping(_number(msg, "t", -1e15, 1e15) or 0.0)
    if kind == "control":
        expression = msg.get("expression")
        if expression is not None:
            if not isinstance(expression, dict):
                raise ProtocolError("expression must be an object of name: value")
            unknown = sorted(set(expression) - set(expressions))
            if unknown:
                raise ProtocolError(f"unknown expression {unknown[0]!r}: this server has {', '.join(expressions)}")
            expression = {k: _number(expression, k, -1.0, 1.0) for k in expression}
        resolution = _number(msg, "resolution", 1, 1 << 16)
        if resolution is not None and int(resolution) not in resolutions:
            raise ProtocolError(f"resolution must be one of {list(resolutions)}, got {resolution:g}")
        render = msg.get("render")
        if render is not None and render not in RENDERS:
            raise ProtocolError(f"render must be {' or '.join(RENDERS)}, got {str(render)[:40]!r}")
        return Control(
            render=render,
            expression=expression,
            yaw=_number(msg, "yaw", -90.0, 90.0),
            pitch=_number(msg, "pitch", -90.0, 90.0),
            zoom=_number(msg, "zoom", 1.0, ZOOM_LIMIT),
            resolution=None if resolution is None else int(resolution),
            idle_motion=_flag(msg, "idle_motion"),
            paused=_flag(msg, "paused"),
        )
    raise ProtocolError(f"unknown message type {kind[:40]!r}")


def parse_audio(data: bytes) -> np.ndarray:
    """A binary message -> its 16 kHz samples ``[S] float32`` in [-1, 1) (ProtocolError when malformed)."""
    if len(data) > MAX_AUDIO_BYTES:
        raise ProtocolError(f"audio chunk over {MAX_AUDIO_BYTES} bytes")
    if len(data) % 2:
        raise ProtocolError("audio chunk has an odd number of bytes (int16 samples expected)")
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def frame_message(header: dict[str, Any], jpeg: bytes = b"") -> bytes:
    """One frame on the wire: u32 LE header length, the header as UTF-8 JSON, the JPEG."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + jpeg


def read_frame_message(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Inverse of :func:`frame_message` (for clients and tests)."""
    (n,) = struct.unpack_from("<I", data)
    return json.loads(data[4 : 4 + n]), data[4 + n :]


def error_message(message: str, fatal: bool = False) -> dict:
    return {"type": "error", "message": " ".join(str(message).split()), "fatal": fatal}

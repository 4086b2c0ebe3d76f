"""Decoded video frames as the rest of the project wants them: upright, 8-bit SDR RGB.

Phones write what a plain decode gets wrong:

- **Display rotation.** A portrait phone clip is stored landscape with a display matrix that turns
  it (0/90/180/270 degrees, possibly mirrored). :func:`orientation_of` reads the matrix the way
  FFmpeg's own auto-rotation does (``fftools``: ``get_rotation`` and the transpose/flip it picks)
  and returns it as ``(k, mirror)``: the upright picture is ``np.rot90(stored, k)``, then mirrored
  left-right when ``mirror``. Angles that are not a multiple of 90 degrees are a UserError.
- **HDR.** 10-bit HLG or PQ (the iPhone default) read as plain video looks washed out. Such frames
  are converted here: Y'CbCr (BT.2020 non-constant luminance, the frame's range) -> R'G'B' ->
  linear light through the inverse PQ EOTF or the HLG inverse OETF and a 1000-nit OOTF (system
  gamma 1.2) -> BT.2020 to BT.709 primaries -> SDR relative to the 203-nit reference white of
  ITU-R BT.2408, with a soft knee from 0.9 of white (highlights above white are compressed, not
  clipped) -> BT.1886 gamma 2.4 -> 8 bits. Content at or below 0.9 of reference white comes back
  as the SDR picture it would be (tested by a round trip through each transfer).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from avatar3d.errors import UserError

# FFmpeg's AVColorTransferCharacteristic values that need conversion
TRC_PQ = 16  # SMPTE ST 2084
TRC_HLG = 18  # ARIB STD-B67
HDR_TRANSFERS = {TRC_PQ: "pq", TRC_HLG: "hlg"}
REFERENCE_WHITE_NITS = 203.0  # BT.2408: HDR reference white = SDR 100 %
HLG_PEAK_NITS = 1000.0
KNEE = 0.9  # linear SDR level above which highlights roll off
SDR_GAMMA = 2.4  # BT.1886
BT2020_TO_BT709 = np.array([
    [1.6604910, -0.5876411, -0.0728499],
    [-0.1245505, 1.1328999, -0.0083494],
    [-0.0181508, -0.1005789, 1.1187297],
], np.float32)
KR_2020, KB_2020 = 0.2627, 0.0593


@dataclass(frozen=True)
class Orientation:
    """Turn a stored frame upright: ``np.rot90(frame, k)``, then mirror left-right if ``mirror``."""

    k: int = 0  # quarter turns counter-clockwise, 0..3
    mirror: bool = False

    @property
    def swaps_size(self) -> bool:
        return self.k % 2 == 1

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """``[H, W, C]`` stored -> upright (a new contiguous array unless nothing changes)."""
        if self.k == 0 and not self.mirror:
            return frame
        out = np.rot90(frame, self.k)
        if self.mirror:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def describe(self) -> str:
        if self.k == 0 and not self.mirror:
            return "none"
        turn = {0: "", 1: "rotated 90 ccw", 2: "rotated 180", 3: "rotated 90 cw"}[self.k]
        return ", ".join(p for p in (turn, "mirrored" if self.mirror else "") if p)


def orientation_of(matrix: tuple[int, ...] | None) -> Orientation:
    """The :class:`Orientation` of a 9-integer display matrix (FFmpeg's layout; None = upright).

    Mirrors fftools: ``theta = round(atan2(m1, m0))`` mod 360 (after normalising the columns),
    90 -> transpose "cclock_flip" if m3 > 0 else "clock"; 270 -> "clock_flip" if m3 < 0 else
    "cclock"; 180 -> hflip if m0 < 0, vflip if m4 < 0; 0 -> vflip if m4 < 0."""
    if matrix is None:
        return Orientation()
    m = [v / 65536.0 for v in matrix]
    s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:
        return Orientation()
    theta = round(math.degrees(math.atan2(m[1] / s1, m[0] / s0)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return Orientation(3, True) if m[3] > 0 else Orientation(3, False)  # cclock_flip / clock
    if abs(theta - 270) < 1:
        return Orientation(1, True) if m[3] < 0 else Orientation(1, False)  # clock_flip / cclock
    if abs(theta - 180) < 1:
        h, v = m[0] < 0, m[4] < 0
        return {(True, True): Orientation(2), (True, False): Orientation(0, True),
                (False, True): Orientation(2, True), (False, False): Orientation()}[(h, v)]
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return Orientation(2, True) if m[4] < 0 else Orientation()
    raise UserError(f"the video's display matrix turns it by {theta:g} degrees: only multiples of 90 are supported")


def frame_display_matrix(frame) -> tuple[int, ...] | None:
    """The display matrix a PyAV VideoFrame carries (9 ints), or None."""
    for side in frame.side_data:
        if "DISPLAYMATRIX" in str(side.type):
            raw = bytes(side)
            if len(raw) >= 36:
                return struct.unpack("<9i", raw[:36])
    return None


# ---------------------------------------------------------------------------------------------
# HDR -> SDR


def pq_to_nits(e: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 inverse EOTF: signal [0, 1] -> display light in nits."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.clip(e, 0, 1), 1 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0) / (c2 - c3 * p), 1 / m1)


def nits_to_pq(nits: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 EOTF inverse (display light in nits -> signal), for tests and round trips."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = np.power(np.clip(nits / 10000.0, 0, 1), m1)
    return np.power((c1 + c2 * y) / (1 + c3 * y), m2)


_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073


def hlg_to_nits(rgb: np.ndarray) -> np.ndarray:
    """HLG signal R'G'B' [..., 3] -> display light in nits on a 1000-nit display (inverse OETF,
    then the OOTF with system gamma 1.2 on BT.2020 luminance)."""
    e = np.clip(rgb, 0, 1)
    scene = np.where(e <= 0.5, e * e / 3, (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12)
    ys = scene @ np.array([KR_2020, 1 - KR_2020 - KB_2020, KB_2020], np.float32)
    return HLG_PEAK_NITS * np.power(np.maximum(ys, 1e-12), 0.2)[..., None] * scene


def nits_to_hlg(nits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hlg_to_nits` (for tests and round trips)."""
    fd = np.maximum(nits / HLG_PEAK_NITS, 0)
    yd = fd @ np.array([KR_2020, 1 - KR_2020 - KB_2020, KB_2020], np.float32)
    scene = np.power(np.maximum(yd, 1e-12), (1 / 1.2) - 1)[..., None] * fd
    return np.where(scene <= 1 / 12, np.sqrt(3 * scene), _HLG_A * np.log(np.maximum(12 * scene - _HLG_B, 1e-12)) + _HLG_C)


def tone_map(x: np.ndarray) -> np.ndarray:
    """Linear light relative to reference white -> [0, 1): identity up to KNEE, then a C1 roll-off."""
    t = np.maximum(x - KNEE, 0) / (1 - KNEE)
    return np.where(x <= KNEE, np.maximum(x, 0), KNEE + (1 - KNEE) * t / (1 + t))


def ycbcr_to_rgb(yuv10: np.ndarray, full_range: bool) -> np.ndarray:
    """BT.2020 NCL Y'CbCr in 10-bit code values ``[..., 3]`` -> R'G'B' in [0, 1] (not clipped)."""
    y, cb, cr = yuv10[..., 0], yuv10[..., 1], yuv10[..., 2]
    if full_range:
        y, cb, cr = y / 1023, (cb - 512) / 1023, (cr - 512) / 1023
    else:
        y, cb, cr = (y - 64) / 876, (cb - 512) / 896, (cr - 512) / 896
    r = y + 2 * (1 - KR_2020) * cr
    b = y + 2 * (1 - KB_2020) * cb
    g = (y - KR_2020 * r - KB_2020 * b) / (1 - KR_2020 - KB_2020)
    return np.stack([r, g, b], -1)


def hdr_to_sdr(rgb_signal: np.ndarray, transfer: str) -> np.ndarray:
    """HDR R'G'B' (BT.2020, ``transfer`` "pq" or "hlg") ``[..., 3]`` -> SDR BT.709 ``uint8``."""
    nits = pq_to_nits(rgb_signal) if transfer == "pq" else hlg_to_nits(rgb_signal)
    linear = (nits / REFERENCE_WHITE_NITS).astype(np.float32) @ BT2020_TO_BT709.T
    sdr = np.power(tone_map(linear), 1 / SDR_GAMMA)
    return np.clip(np.round(sdr * 255), 0, 255).astype(np.uint8)


def sdr_to_hdr_signal(rgb8: np.ndarray, transfer: str) -> np.ndarray:
    """The inverse for SDR content (tests): ``uint8`` BT.709 -> HDR R'G'B' signal in BT.2020."""
    linear = np.power(rgb8.astype(np.float32) / 255, SDR_GAMMA) @ np.linalg.inv(BT2020_TO_BT709).T
    nits = np.maximum(linear, 0) * REFERENCE_WHITE_NITS
    return nits_to_pq(nits) if transfer == "pq" else nits_to_hlg(nits)


def rgb_to_ycbcr10(rgb: np.ndarray) -> np.ndarray:
    """R'G'B' [0, 1] -> limited-range BT.2020 NCL Y'CbCr 10-bit code values (tests)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = KR_2020 * r + (1 - KR_2020 - KB_2020) * g + KB_2020 * b
    cb, cr = (b - y) / (2 * (1 - KB_2020)), (r - y) / (2 * (1 - KR_2020))
    return np.stack([64 + 876 * y, 512 + 896 * cb, 512 + 896 * cr], -1)


@dataclass(frozen=True)
class PictureConverter:
    """Turns the decoded frames of one stream into upright 8-bit SDR RGB (see module docstring)."""

    orientation: Orientation
    transfer: str  # "sdr", "pq" or "hlg"
    full_range: bool = False

    @staticmethod
    def of(frame) -> "PictureConverter":
        """Learn orientation and transfer from a stream's first decoded frame."""
        trc = int(frame.color_trc or 0)
        return PictureConverter(orientation_of(frame_display_matrix(frame)), HDR_TRANSFERS.get(trc, "sdr"),
                                int(frame.color_range or 0) == 2)

    def __call__(self, frame) -> np.ndarray:
        """A PyAV VideoFrame -> ``[H, W, 3] uint8`` RGB, upright and SDR."""
        if self.transfer == "sdr":
            rgb = frame.to_ndarray(format="rgb24")
        else:
            yuv10 = frame.reformat(format="yuv444p16le").to_ndarray().astype(np.float32) / 64.0  # 10-bit scale
            rgb = hdr_to_sdr(ycbcr_to_rgb(yuv10, self.full_range), self.transfer)
        return self.orientation.apply(rgb)

    def describe(self) -> dict:
        """What is done to the frames (for the dataset's manifest and report)."""
        return {"orientation": self.orientation.describe(),
                "hdr": "none" if self.transfer == "sdr" else f"{self.transfer} -> SDR BT.709 (BT.2408, 203-nit white)"}

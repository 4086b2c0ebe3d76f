"""The audio-to-motion prior: audio features -> per-frame mouth/jaw/cheek blendshapes.

Model
    A temporal convolution net over the ``mel`` features (:mod:`avatar3d.audio.features`), one output per
    25 fps video frame. All convolutions are *valid* (unpadded); the receptive field is
    ``R = receptive_field`` frames (33 = 1.32 s) of which ``lookahead`` (2 frames = 80 ms) lie
    after the output frame. Offline, the feature sequence is padded with ``R - 1 - lookahead``
    silence frames in front and ``lookahead`` at the end; streaming (:class:`PriorStream`) runs
    the same layers incrementally, so both compute the same function.

Silence
    Silence is trained to the rest pose (augmentation), and a deterministic gate makes it exact:
    the output is pulled to the rest pose when the speech-band loudness of the frame and its
    look-ahead is below ``PriorNetConfig.silence_db`` (digital silence; white noise is
    fully gated below -76 dBFS, half at -71 dBFS). The gate is part of ``forward``, so training,
    offline and streaming agree.

Motion code
    ``SPEECH_CHANNELS``: the 28 mediapipe blendshapes of the jaw, lips and cheeks, in
    ``avatar3d.core.dataset.BLENDSHAPE_NAMES`` units ([0, 1]).

Per-speaker normalisation
    People open their mouths differently and the tracker's blendshape ranges differ per identity,
    so the net is trained on per-speaker normalised targets ``u = (y - rest_s) / scale_s``:
    ``rest_s`` [M] is the speaker's closed-mouth pose (per-channel median over the frames whose
    mouth opening, the inner-lip gap the tracker's landmarks give, is in that speaker's lowest
    ``REST_PERCENTILE`` %; jawOpen's lowest where a dataset has no landmarks), ``scale_s`` [M] the
    per-channel standard deviation
    (floored at ``MIN_SCALE``). Outputs are mapped back with a ``rest``/``scale`` pair stored in
    the weights: for the shipped generic prior the pooled closed-mouth pose of all training
    frames and the mean scale (:func:`generic_output_stats`); the identity's own after
    :func:`finetune_prior`. Silence is trained to ``u = 0`` (the rest pose).

Voice matching
    A driving voice recorded unlike the identity's clip (a radio voice, EQ'd and compressed; another
    microphone) shifts every band of the log-mel input, and the prior reads that as articulation:
    on a radio address the fine-tuned priors pressed the lips on open vowels as hard as on /p b m/
    (BENCHMARKS.md, articulation, lever 4). A fine-tuned prior therefore carries the identity's own
    mean log-mel spectrum over its sounding frames (``voice_mean`` [F]) and moves the driving
    voice's mean there: each input frame ``i`` gets ``voice_match * (voice_mean - m_i)`` added,
    where ``m_i`` is the running mean of the driving audio's sounding frames up to ``i``, started
    from ``voice_mean`` with the weight of ``VOICE_PRIOR_FRAMES`` frames (so the first second of
    speech is matched partly, and nothing is shifted before any speech). It is causal, so offline
    and streaming inference compute the same (:class:`VoiceMatch`); the silence gate reads the
    unshifted features. ``voice_match`` 0 (the shipped generic prior, weights from before it
    existed) leaves the input as it is.

Syllable contrast
    Even widened to the identity's spread (:func:`match_articulation`), the prior's mouth on a new
    voice glides through syllables where the person's shuts between them: a regression in time,
    not only in amplitude. A prior may therefore carry a syllable contrast, per channel: each
    output frame's normalised motion ``v_i`` (the gated net output) becomes ``v_i + k (v_i - box_i)``, where
    ``box_i`` is the mean of ``v`` over that frame and the ``CONTRAST_FRAMES - 1`` before it (the
    frames before the audio count as rest, as offline padding does). ``k`` is ``contrast`` [M] where
    the move goes toward rest (``v = 0``: the dips between syllables go deeper, closures) and
    ``contrast_away`` [M] where it goes away from rest (the peaks: open vowels go higher). It is
    causal, so it adds no latency and offline and streaming agree (:class:`SyllableContrast`);
    frames the silence gate shuts stay exactly at rest. Both 0 (the shipped generic prior, weights
    from before it existed) leave the output as it is; weights from before ``contrast_away`` existed
    load with it equal to ``contrast`` (as they computed). Fit's fine-tuning sets them
    (``FitParams.prior_contrast`` 1 and ``prior_contrast_away`` 0 by default: deeper dips, peaks as
    they are).

Audio/video offsets
    Some source clips carry an audio/video offset (BENCHMARKS.md lists the test clips'). Training measures each clip's offset (:func:`av_offset`, the lag in
    +-``max_offset`` frames maximising the correlation of jawOpen and speech loudness) and trains
    on tracks shifted by it.

Training (``avatar3d prior train``) reads datasets made by ``avatar3d preprocess``: the targets
are the tracked blendshapes of tracks.npz (frames with ``valid`` set), the inputs
``features/mel.npy``. Augmentation (in the mel-power domain): random gain, spectral tilt, mel
axis warp, white noise, and stretches of silence (digital or very low noise) with rest targets.
Measured quality (leave-one-speaker-out correlations) is in bench/results/prior.json.
The shipped weights (``assets/prior.pt``) were trained on the Obama, CNN and Macron clips of
../shared/data; the Lieu clip is left out because every prior trained with it transferred worse to
the other speakers (BENCHMARKS.md, audio-to-motion prior).
"""
from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import math
import pickle
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Sequence, Union

import numpy as np
import torch
import tyro
from torch import nn
import torch.nn.functional as F

from avatar3d.audio import features as A
from avatar3d.core.dataset import FPS, DatasetPaths, load_tracks, read_manifest
from avatar3d.core.vocab import BLENDSHAPE_NAMES, SPEECH_CHANNELS, SPEECH_INDEX
from avatar3d.errors import UserError
from avatar3d.fsutil import atomic_file
from avatar3d.drive.sync import mouth_opening, pearson

FORMAT = "avatar3d-prior"
FORMAT_VERSION = 1
MIN_SCALE = 0.01

JAW_OPEN = SPEECH_CHANNELS.index("jawOpen")
# A speaker's rest pose (what silence gives) is the median of their most-closed frames: the lowest
# 2 % by the lips' gap. The lowest 10 % mixes in half-open pauses, and silence rendered half open;
# the lowest by jawOpen alone left some speakers' lips apart in silence (BENCHMARKS.md,
# audio-to-motion prior; articulation, silence).
REST_PERCENTILE = 2.0


def motion_from_blendshapes(blendshapes: np.ndarray) -> np.ndarray:
    """``[N, 52]`` blendshapes -> ``[N, M]`` motion code (the SPEECH_CHANNELS columns)."""
    return np.asarray(blendshapes)[:, list(SPEECH_INDEX)]


def blendshapes_from_motion(motion: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """``[N, M]`` motion code -> ``[N, 52]`` blendshapes; other columns from ``base`` [52] (or 0)."""
    motion = np.asarray(motion, np.float32)
    out = np.zeros((len(motion), len(BLENDSHAPE_NAMES)), np.float32)
    if base is not None:
        out[:] = np.asarray(base, np.float32)
    out[:, list(SPEECH_INDEX)] = motion
    return out


# ----------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class PriorNetConfig:
    """Shape of the prior's network (stored inside the weight file)."""

    encoder: str = "mel"
    """Audio encoder whose features the net reads (see avatar3d.audio.features.ENCODERS)."""
    hidden: int = 128
    """Channels of the temporal convolutions."""
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1)
    """Dilation of each kernel-3 residual convolution block."""
    lookahead: int = 2
    """Video frames of audio after the output frame the net may read (2 = 80 ms)."""
    dropout: float = 0.1
    """Dropout in the residual blocks (training only)."""
    silence_db: tuple[float, float] = (-50.0, -40.0)
    """Silence gate: an output frame whose loudest frame among it and its look-ahead is below
    the first speech-band loudness (dB, gate_loudness: the last two mel windows of a frame, which
    hold only its own audio; digital silence is -59.7, white noise at -70 dBFS about -44, the
    quietest 1 % of the training clips -40..-26) is pulled fully to the rest pose, fully
    free above the second, linearly in between."""

    @property
    def receptive_field(self) -> int:
        """Input frames that one output frame depends on."""
        return 1 + sum(2 * d for d in self.dilations)


class AudioMotionPrior(nn.Module):
    """Temporal conv net ``[B, T + R - 1, *frame_shape]`` features -> ``[B, T, M]`` normalised motion.

    Buffers: ``feat_mean``/``feat_std`` [F] (per mel band, input normalisation), ``rest``/``scale``
    [M] (output de-normalisation), ``voice_mean`` [F] and ``voice_match`` [] (voice matching),
    ``contrast``/``contrast_away`` [M] (syllable contrast toward / away from rest, per channel); see
    the module docstring.
    """

    def __init__(self, config: PriorNetConfig, num_motion: int = len(SPEECH_CHANNELS)):
        super().__init__()
        self.config = config
        enc = A.get_encoder(config.encoder)
        self.frame_shape = enc.frame_shape
        feat_dim = enc.frame_shape[-1]
        if config.lookahead < 0 or config.lookahead > config.receptive_field - 1:
            raise UserError(f"prior lookahead {config.lookahead} must be in [0, {config.receptive_field - 1}]")
        self.register_buffer("feat_mean", torch.zeros(feat_dim))
        self.register_buffer("feat_std", torch.ones(feat_dim))
        self.register_buffer("rest", torch.zeros(num_motion))
        self.register_buffer("scale", torch.ones(num_motion))
        self.register_buffer("voice_mean", torch.zeros(feat_dim))
        self.register_buffer("voice_match", torch.zeros(()))
        self.register_buffer("contrast", torch.zeros(num_motion))
        self.register_buffer("contrast_away", torch.zeros(num_motion))
        self.train_info: dict = {}
        """How the weights were made (datasets, steps, losses, fine-tuning): saved with them."""
        h = config.hidden
        self.inp = nn.Conv1d(enc.dim, h, 1)
        self.convs = nn.ModuleList([nn.Conv1d(h, h, 3, dilation=d) for d in config.dilations])
        self.norms = nn.ModuleList([nn.LayerNorm(h) for _ in config.dilations])  # per frame
        self.out = nn.Conv1d(h, num_motion, 1)
        # The skip path of block k carries the input frame its output frame stands for: the
        # look-ahead is spent in the first blocks.
        offsets, left = [], config.lookahead
        for d in config.dilations:
            la = min(left, 2 * d)
            left -= la
            offsets.append(2 * d - la)
        self.skip_offsets = tuple(offsets)
        self.drop = nn.Dropout(config.dropout)

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    @property
    def lookahead(self) -> int:
        return self.config.lookahead

    def forward(self, feats: torch.Tensor, voice_shift: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` [B, T + R - 1, *frame_shape] -> normalised motion [B, T, M].

        ``voice_shift`` [B, T + R - 1, F] is added to every window of a frame before the net (the
        silence gate reads ``feats`` as they are); None = no shift (training, fine-tuning)."""
        return self.gated(feats, voice_shift)[0]

    def gated(self, feats: torch.Tensor, voice_shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` and the silence gate it applied: ([B, T, M], [B, T])."""
        b, t = feats.shape[:2]
        x = feats if voice_shift is None else feats + voice_shift.reshape(b, t, *([1] * (feats.dim() - 3)), -1)
        x = (x - self.feat_mean) / self.feat_std  # [B, T', ..., F]
        x = x.reshape(b, t, -1).transpose(1, 2)  # [B, D, T']
        x = F.gelu(self.inp(x))  # [B, H, T']
        for conv, norm, off in zip(self.convs, self.norms, self.skip_offsets):
            y = conv(self.drop(x))  # [B, H, T' - 2 d]
            y = norm(y.transpose(1, 2)).transpose(1, 2)  # over channels, frame by frame
            x = x[:, :, off : off + y.shape[-1]] + F.gelu(y)
        u = self.out(x).transpose(1, 2)  # [B, T, M]
        gate = self.speech_gate(feats)
        return u * gate[..., None], gate

    def speech_gate(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, T + R - 1, 4, 80]`` features -> ``[B, T]`` silence gate in [0, 1] (0 = silent)."""
        r, la = self.receptive_field, self.lookahead
        loud = _loudness_torch(feats[:, :, GATE_SUBFRAMES])  # [B, T']
        ahead = loud[:, r - 1 - la :].unfold(1, la + 1, 1).amax(-1)  # [B, T]: max over t .. t + la
        lo, hi = self.config.silence_db
        return ((ahead - lo) / (hi - lo)).clamp(0.0, 1.0)

    def denormalise(self, u: torch.Tensor) -> torch.Tensor:
        """Normalised motion [..., M] -> blendshape units [..., M], clipped to [0, 1]."""
        return (self.rest + self.scale * u).clamp(0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _speech_band() -> np.ndarray:
    """``[80]`` bool: the mel bands centred in 300-4000 Hz."""
    centres = A._mel_to_hz(np.linspace(A._hz_to_mel(0.0), A._hz_to_mel(A.AUDIO_RATE / 2), A.N_MELS + 2))[1:-1]
    return (centres >= 300) & (centres <= 4000)


def _loudness_torch(feats: torch.Tensor) -> torch.Tensor:
    """:func:`speech_loudness` in torch: ``[B, T, 4, 80]`` -> ``[B, T]`` dB."""
    band = torch.from_numpy(_speech_band()).to(feats.device)
    power = torch.pow(10.0, 4.0 * feats[..., band].double() - 4.0)
    return (10 * torch.log10(power.sum(dim=(-2, -1)) + 1e-10)).to(feats.dtype)


def _silence_frames(prior: AudioMotionPrior, n: int) -> np.ndarray:
    return np.full((n, *prior.frame_shape), A.SILENCE_VALUE, np.float32)


def _check_features(prior: AudioMotionPrior, feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 1 + len(prior.frame_shape) or feats.shape[1:] != prior.frame_shape:
        raise UserError(
            f"the prior reads {prior.config.encoder!r} features [N, {', '.join(map(str, prior.frame_shape))}], "
            f"got {list(feats.shape)}"
        )
    return feats


def pad_features(prior: AudioMotionPrior, feats: np.ndarray) -> np.ndarray:
    """``[N, ...]`` features -> ``[N + R - 1, ...]`` with the silence context the net needs."""
    r, la = prior.receptive_field, prior.lookahead
    return np.concatenate([_silence_frames(prior, r - 1 - la), feats, _silence_frames(prior, la)])


VOICE_PRIOR_FRAMES = 25
"""Weight, in sounding frames (1 s), of the identity's own mean spectrum that the driving voice's
running mean starts from (module docstring, voice matching)."""


class VoiceMatch:
    """The running voice-matching shift of one driving audio: feed its frames in order, in one call
    or many (the result is the same), get the shift each frame gets. See the module docstring.

    ``shift(frames [k, W, F]) -> [k, F]`` float32; all zeros when the prior does not match voices.
    """

    def __init__(self, prior: AudioMotionPrior):
        self.target = prior.voice_mean.detach().double().cpu().numpy()  # [F]
        self.share = float(prior.voice_match)
        self.prior = prior
        self._sum = VOICE_PRIOR_FRAMES * self.target  # [F]: sounding frames' means so far, plus the start
        self._count = float(VOICE_PRIOR_FRAMES)

    @property
    def active(self) -> bool:
        return self.share != 0.0

    def shift(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, np.float64)
        if not self.active or len(frames) == 0:
            return np.zeros((len(frames), frames.shape[-1]), np.float32)
        sounding = sounding_frames(self.prior, frames).astype(np.float64)  # [k]
        sums = self._sum + np.cumsum(sounding[:, None] * frames.mean(axis=1), axis=0)  # [k, F]
        counts = self._count + np.cumsum(sounding)  # [k]
        self._sum, self._count = sums[-1], float(counts[-1])
        return (self.share * (self.target - sums / counts[:, None])).astype(np.float32)


CONTRAST_FRAMES = 5
"""Frames (200 ms, the output frame and the 4 before it) whose mean motion a frame is contrasted
with (module docstring, syllable contrast)."""


class SyllableContrast:
    """The causal syllable contrast of one output stream: feed its normalised, gated motion frames
    in order, in one call or many (the result is the same). See the module docstring.

    ``apply(v [n, M], gate [n]) -> [n, M]`` float32; ``v`` unchanged when the prior's contrast is 0
    both ways.
    """

    def __init__(self, prior: AudioMotionPrior):
        self.k_toward = prior.contrast.detach().double().cpu().numpy()  # [M]: moves toward rest
        self.k_away = prior.contrast_away.detach().double().cpu().numpy()  # [M]: moves away from it
        self._recent = np.zeros((CONTRAST_FRAMES - 1, len(self.k_toward)), np.float64)  # rest before the audio

    @property
    def active(self) -> bool:
        return bool(np.any(self.k_toward != 0.0) or np.any(self.k_away != 0.0))

    def apply(self, v: np.ndarray, gate: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        if not self.active or len(v) == 0:
            return v.astype(np.float32)
        seq = np.concatenate([self._recent, v])  # [CONTRAST_FRAMES - 1 + n, M]
        csum = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(seq, axis=0)])
        box = (csum[CONTRAST_FRAMES:] - csum[:-CONTRAST_FRAMES]) / CONTRAST_FRAMES  # [n, M]
        self._recent = seq[-(CONTRAST_FRAMES - 1):]
        delta = v - box
        away = delta * v > 0  # the move goes the way v already lies from rest (0)
        out = v + np.where(away, self.k_away, self.k_toward) * delta
        out[np.asarray(gate) <= 0.0] = 0.0  # the gate's silence stays exactly rest
        return out.astype(np.float32)


@torch.no_grad()
def predict_motion(prior: AudioMotionPrior, audio_features: np.ndarray, normalised: bool = False) -> np.ndarray:
    """Offline inference: ``[N, *frame_shape]`` features -> ``[N, M]`` float32 motion code.

    Blendshape units in [0, 1] (SPEECH_CHANNELS order), or the net's normalised output when
    ``normalised``. The features are one driving audio from its start (voice matching runs over it).
    """
    feats = _check_features(prior, audio_features)
    if len(feats) == 0:
        return np.zeros((0, len(SPEECH_CHANNELS)), np.float32)
    prior.eval()
    device = prior.feat_mean.device
    x = torch.from_numpy(pad_features(prior, feats)).to(device)[None]
    voice = VoiceMatch(prior)
    shift = None
    if voice.active:  # the silence padding is not shifted, as in PriorStream
        r, la = prior.receptive_field, prior.lookahead
        shift = np.zeros((x.shape[1], feats.shape[-1]), np.float32)
        shift[r - 1 - la : r - 1 - la + len(feats)] = voice.shift(feats)
        shift = torch.from_numpy(shift).to(device)[None]
    u, gate = (y[0] for y in prior.gated(x, shift))  # [N, M] (gated), [N]
    contrast = SyllableContrast(prior)
    if contrast.active:
        u = torch.from_numpy(contrast.apply(u.float().cpu().numpy(), gate.float().cpu().numpy())).to(u.device)
    out = u if normalised else prior.denormalise(u)
    return out.float().cpu().numpy()


def predict_motion_from_audio(prior: AudioMotionPrior, audio: np.ndarray) -> np.ndarray:
    """``[S]`` 16 kHz audio -> ``[S // 640, M]`` motion code."""
    return predict_motion(prior, A.encode(prior.config.encoder, audio))


class PriorStream:
    """Live inference: push 16 kHz audio in chunks (e.g. 20 ms = 320 samples), get motion frames.

    Output frame ``i`` (audio ``[640 i, 640 (i + 1))``) is returned once the audio up to the end of
    frame ``i + lookahead`` has been pushed: a look-ahead of ``lookahead * 40`` ms (80 ms) past
    the frame's own audio. ``push`` returns ``[k, M]`` new frames (k is 0 or 1 for 20 ms chunks);
    ``flush`` ends the stream as offline inference ends a clip (silence after the end). The
    concatenated output equals :func:`predict_motion` on the whole clip within float rounding
    (tested at 1e-4).

    The net runs incrementally on the CPU in numpy: each layer keeps the last ``2 d + 1`` frames
    of its input, so a new frame costs one step of each layer (no recomputation of the window).
    """

    def __init__(self, prior: AudioMotionPrior):
        enc = A.get_encoder(prior.config.encoder)
        if not enc.streaming:
            raise UserError(f"audio encoder {prior.config.encoder!r} does not stream")
        self.lookahead = prior.lookahead
        self.frame_shape = prior.frame_shape
        g = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        self._mean, self._std = g(prior.feat_mean), g(prior.feat_std)  # [F]
        self._rest, self._scale = g(prior.rest), g(prior.scale)  # [M]
        self._w_in, self._b_in = g(prior.inp.weight)[:, :, 0], g(prior.inp.bias)  # [H, D], [H]
        self._layers = []
        for conv, norm, off, d in zip(prior.convs, prior.norms, prior.skip_offsets, prior.config.dilations):
            w = g(conv.weight)  # [H, H, 3]
            self._layers.append(
                (d, off, w.transpose(0, 2, 1).reshape(w.shape[0], -1), g(conv.bias), g(norm.weight), g(norm.bias), norm.eps)
            )
        self._w_out, self._b_out = g(prior.out.weight)[:, :, 0], g(prior.out.bias)  # [M, H], [M]
        self._bufs: list[list[np.ndarray]] = [[] for _ in self._layers]  # inputs of each layer
        self._loud: list[float] = []  # speech loudness of the last lookahead + 1 input frames
        self._silence_db = prior.config.silence_db
        self._voice = VoiceMatch(prior)
        self._contrast = SyllableContrast(prior)
        self._mel = A.MelStream()
        self.frames_out = 0
        r = prior.receptive_field
        self._warming = True
        self._feed(_silence_frames(prior, r - 1 - self.lookahead), padding=True)  # the offline silence prefix
        self._warming = False

    def _step(self, frame: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, float] | None:
        """One input frame ``[4, 80]`` and its voice shift ``[80]`` -> the normalised, gated motion
        ``[M]`` of the frame it completes and that frame's gate, if any."""
        from scipy.special import erf

        gelu = lambda v: 0.5 * v * (1.0 + erf(v / np.sqrt(2.0)))  # noqa: E731
        self._loud.append(float(speech_loudness(np.asarray(frame)[None, GATE_SUBFRAMES])[0]))
        if len(self._loud) > self.lookahead + 1:
            self._loud.pop(0)
        x = ((np.asarray(frame, np.float32) + shift - self._mean) / self._std).reshape(-1)  # [D]
        x = gelu(self._w_in @ x + self._b_in)  # [H]
        for buf, (d, off, w, b, nw, nb, eps) in zip(self._bufs, self._layers):
            buf.append(x)
            if len(buf) > 2 * d + 1:
                buf.pop(0)
            if len(buf) < 2 * d + 1:
                return None
            y = w @ np.concatenate([buf[0], buf[d], buf[2 * d]]) + b  # [H]
            y = (y - y.mean()) / np.sqrt(y.var() + eps) * nw + nb
            x = buf[off] + gelu(y)
        u = self._w_out @ x + self._b_out  # [M]
        gate = np.clip((max(self._loud) - self._silence_db[0]) / (self._silence_db[1] - self._silence_db[0]), 0.0, 1.0)
        return u * gate, float(gate)

    def _feed(self, frames: np.ndarray, padding: bool = False) -> np.ndarray:
        """Input frames ``[k, 4, 80]`` -> the motion ``[j, M]`` they complete; ``padding`` frames
        (the silence before and after the audio) are not voice-matched, as offline."""
        shifts = np.zeros((len(frames), frames.shape[-1]), np.float32) if padding else self._voice.shift(frames)
        outs = [m for m in (self._step(f, d) for f, d in zip(frames, shifts)) if m is not None]
        if not self._warming:
            self.frames_out += len(outs)
        if not outs:
            return np.zeros((0, len(SPEECH_CHANNELS)), np.float32)
        v = self._contrast.apply(np.stack([u for u, _ in outs]), np.array([g for _, g in outs]))
        return np.clip(self._rest + self._scale * v, 0.0, 1.0).astype(np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed audio ``[s]`` float32; returns the motion ``[k, M]`` of newly finished frames."""
        return self._feed(self._mel.push(samples))

    def flush(self) -> np.ndarray:
        """End of stream: the last ``lookahead`` frames (partial audio in the last frame is dropped)."""
        return self._feed(np.full((self.lookahead, *self.frame_shape), A.SILENCE_VALUE, np.float32), padding=True)


# ----------------------------------------------------------------------------------------------
# Weights


def _state(prior: AudioMotionPrior, train_info: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "net": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(prior.config).items()},
        "motion_names": list(SPEECH_CHANNELS),
        "state_dict": {k: v.detach().cpu() for k, v in prior.state_dict().items()},
        "train": json.dumps(train_info),
    }


def save_prior(prior: AudioMotionPrior, path: Path) -> None:
    """Write the weights (float32, with their config and training summary) atomically."""
    with atomic_file(Path(path), "wb") as f:
        torch.save(_state(prior, prior.train_info), f)


def shipped_prior_path():
    """The packaged weights as an importlib.resources Traversable (works from a wheel or a checkout)."""
    return importlib.resources.files("avatar3d") / "assets" / "prior.pt"


def load_prior(path: Path | None = None, device: str | torch.device = "cpu") -> AudioMotionPrior:
    """Load prior weights (the shipped ones when ``path`` is None); no network, safe unpickling."""
    try:
        if path is None:
            res = shipped_prior_path()
            if not res.is_file():
                raise UserError("the shipped prior weights avatar3d/assets/prior.pt are missing: reinstall avatar3d")
            with res.open("rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
        else:
            path = Path(path)
            if not path.is_file():
                raise UserError(f"prior weights not found: {path}")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as exc:
        raise UserError(f"cannot read prior weights {path or 'avatar3d/assets/prior.pt'}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not an avatar3d prior weight file")
    if obj.get("format_version") != FORMAT_VERSION or tuple(obj.get("motion_names", ())) != SPEECH_CHANNELS:
        raise UserError(f"prior weights {path} were made by another avatar3d version: retrain them")
    net = {k: tuple(v) if isinstance(v, list) else v for k, v in obj["net"].items()}
    prior = AudioMotionPrior(PriorNetConfig(**net))
    state = dict(obj["state_dict"])
    for key in ("voice_mean", "voice_match", "contrast"):  # weights from before these: they stay off
        state.setdefault(key, getattr(prior, key))
    state.setdefault("contrast_away", state["contrast"])  # before the two sides: one contrast both ways
    prior.load_state_dict(state)
    prior.train_info = json.loads(obj.get("train", "{}"))
    return prior.to(device).eval()


# ----------------------------------------------------------------------------------------------
# Training data


@dataclass(frozen=True)
class SpeakerClip:
    """One dataset's training material."""

    name: str
    features: np.ndarray  # [N, 4, 80] float32 mel features (features/mel.npy)
    motion: np.ndarray  # [N, M] float32 tracked motion code (blendshape units)
    valid: np.ndarray  # [N] bool: the tracker found the face
    rest: np.ndarray  # [M] closed-mouth pose of this speaker
    scale: np.ndarray  # [M] per-channel std (>= MIN_SCALE)
    offset: int = 0  # measured audio delay behind the mouth, frames (see av_offset)
    weight: np.ndarray | None = None  # [N] float32 loss weight per (audio-aligned) frame; None = 1

    @property
    def num_frames(self) -> int:
        return len(self.motion)

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-speaker normalised targets ``[N, M]`` and their mask ``[N]``, with the tracks
        shifted by ``offset`` frames so that they line up with the audio."""
        motion, valid = shift_tracks(self.motion, self.valid, self.offset)
        return (motion - self.rest) / self.scale, valid


GATE_SUBFRAMES = slice(2, None)  # mel windows 2, 3 of a frame lie inside its own 40 ms


def speech_loudness(features: np.ndarray) -> np.ndarray:
    """Speech-band (300-4000 Hz) loudness per frame in dB from ``mel`` features ``[N, W, 80]``: ``[N]``."""
    power = 10.0 ** (4.0 * np.asarray(features, np.float64)[..., _speech_band()] - 4.0)
    return 10 * np.log10(power.sum(axis=(1, 2)) + 1e-10)


def sounding_frames(prior: AudioMotionPrior, features: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the frames of ``[N, W, F]`` features loud enough that the silence gate is fully open
    (speech-band loudness above its upper threshold): the frames that speak."""
    return speech_loudness(features) > prior.config.silence_db[1]


def shift_tracks(motion: np.ndarray, valid: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """``motion[t - lag]`` ``[N, M]`` and its validity ``[N]`` (frames with no source are invalid)."""
    if lag == 0:
        return motion, valid
    n = len(motion)
    src = np.clip(np.arange(n) - lag, 0, n - 1)
    ok = (np.arange(n) - lag >= 0) & (np.arange(n) - lag < n)
    return motion[src], valid[src] & ok


def av_offset(features: np.ndarray, jaw: np.ndarray, valid: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The audio's delay behind the mouth in frames, and the correlation there.

    The lag ``L`` in ``[-max_lag, max_lag]`` maximising the Pearson r of ``jaw[t]`` ``[N]`` and
    the speech loudness at ``t + L``. Source clips can carry an audio/video offset (and mouths
    open slightly before the sound); the prior is trained on tracks shifted by ``L``. ``(0, nan)``
    when no lag has enough tracked frames (or any variation) to correlate.
    """
    loud = speech_loudness(features)
    loud = np.maximum(loud, np.percentile(loud, 5))  # silence floor
    best = (0, float("nan"))
    n = len(jaw)
    for lag in range(-max_lag, max_lag + 1):
        t = np.arange(max(0, -lag), min(n, n - lag))
        t = t[valid[t]]
        r = pearson(jaw[t], loud[t + lag]) if len(t) > 10 else float("nan")
        if np.isfinite(r) and not r <= best[1]:  # the first finite r beats nan
            best = (lag, r)
    return best


def speaker_stats(motion: np.ndarray, valid: np.ndarray, opening: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rest pose and scale ``([M], [M])`` of one speaker from ``[N, M]`` motion and ``[N]`` valid.

    The rest frames are the valid frames with the lowest ``REST_PERCENTILE`` % of ``opening`` [N]
    (the lips' gap, :func:`avatar3d.drive.sync.mouth_opening`; NaN where not measured), or of
    jawOpen when ``opening`` is None or measured on fewer than 10 of them."""
    m = motion[valid]
    if len(m) < 10:
        raise UserError(f"too few tracked frames ({len(m)}) to train the prior on")
    shut_by = m[:, JAW_OPEN]
    gap = None if opening is None else np.asarray(opening)[valid]
    if gap is not None and np.isfinite(gap).sum() >= 10:
        shut_by = np.where(np.isfinite(gap), gap, np.inf)  # a frame without a gap is never a rest frame
    closed = shut_by <= np.percentile(shut_by[np.isfinite(shut_by)], REST_PERCENTILE)
    rest = np.median(m[closed], axis=0)
    scale = np.maximum(m.std(axis=0), MIN_SCALE)
    return rest.astype(np.float32), scale.astype(np.float32)


def load_clip(root: Path, encoder: str = "mel", max_offset: int = 0, split: str | None = None) -> SpeakerClip:
    """Read one ``avatar3d preprocess`` dataset as prior training material.

    Inputs are ``features/<encoder>.npy``; a dataset without them gets them computed from
    audio.wav (in memory, the dataset is not changed). With ``max_offset`` > 0 the clip's
    audio/mouth offset is measured (:func:`av_offset`, ``mel`` features only) within that range.
    With ``split`` ("train", "val") only that split's frames count as valid targets (the audio
    of the whole clip stays available as context); rest/scale/offset come from those frames.
    """
    root = Path(root)
    manifest = read_manifest(root)
    paths = DatasetPaths(root)
    tracks = load_tracks(root)
    for key in ("blendshapes", "valid"):
        if key not in tracks:
            raise UserError(f"dataset {root} has no {key!r} in tracks.npz: rerun `avatar3d preprocess`")
    n = manifest.num_frames
    enc = A.get_encoder(encoder)
    if paths.features(encoder).is_file():
        feats = np.load(paths.features(encoder), allow_pickle=False)
    elif paths.audio.is_file():
        feats = A.encode(encoder, A.load_audio(paths.audio))
    else:
        raise UserError(f"dataset {root} has neither features/{encoder}.npy nor audio.wav: rerun `avatar3d preprocess`")
    if feats.shape != (n, *enc.frame_shape) or len(tracks["blendshapes"]) != n:
        raise UserError(
            f"dataset {root}: features/{encoder}.npy {list(feats.shape)}, tracks and manifest "
            f"({n} frames) disagree: rerun `avatar3d preprocess`"
        )
    motion = motion_from_blendshapes(tracks["blendshapes"]).astype(np.float32)
    valid = np.asarray(tracks["valid"], bool)
    if split is not None:
        if split not in manifest.split:
            raise UserError(f"dataset {root} has no {split!r} split (it has {', '.join(manifest.split)})")
        in_split = np.zeros(n, bool)
        in_split[manifest.frame_indices(split)] = True
        valid = valid & in_split
    opening = mouth_opening(tracks["landmarks"]) if "landmarks" in tracks else None
    rest, scale = speaker_stats(motion, valid, opening)
    offset = 0
    if max_offset > 0 and encoder == "mel":
        offset, _ = av_offset(feats, motion[:, JAW_OPEN], valid, max_offset)
    return SpeakerClip(root.name, feats.astype(np.float32), motion, valid, rest, scale, offset)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainHyper:
    """Optimisation and augmentation settings of prior training and fine-tuning."""

    steps: int = 600
    """Optimiser steps."""
    batch: int = 8
    """Windows per step."""
    window: int = 128
    """Output frames per training window."""
    lr: float = 2e-3
    """Peak learning rate (AdamW, linear warm-up then cosine decay)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    velocity_weight: float = 0.5
    """Weight of the frame-to-frame difference loss (keeps motion as smooth as the tracks)."""
    jaw_weight: float = 2.0
    """Extra loss weight of jawOpen."""
    silence_prob: float = 0.5
    """Chance that a window gets a stretch of silence (digital zeros or -100..-60 dBFS white
    noise) with rest-pose targets."""
    silence_frames: tuple[int, int] = (5, 50)
    """Length range of those silent stretches, in frames."""
    gain_db: float = 12.0
    """Random gain of each window, uniform in +-gain_db."""
    noise_prob: float = 0.3
    """Chance of adding white noise 20..50 dB below the window's mean power."""
    warp: float = 0.1
    """Random stretch of the mel axis by a factor in 1 +- warp (a voice-pitch / vocal-tract
    length perturbation)."""
    tilt_db: float = 10.0
    """Random spectral tilt: up to +-tilt_db dB between the lowest and highest mel band."""
    max_offset: int = 8
    """Measure each clip's audio/mouth offset within +-max_offset frames and train on tracks
    shifted by it (0: use the tracks as they are)."""
    seed: int = 0
    """Seed of this run's own random generators (nothing global is seeded)."""


@functools.lru_cache(maxsize=1)
def _white_noise_mel() -> np.ndarray:
    """Expected mel power ``[80]`` of unit-variance white noise through the mel analysis."""
    return (np.sum(A._hann(A.N_FFT) ** 2) * A.mel_filterbank().sum(axis=1)).astype(np.float32)


def _batch(
    clips: Sequence[SpeakerClip], prior: AudioMotionPrior, hp: TrainHyper, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented batch: features [B, T + R - 1, 4, 80], targets [B, T, M], and the loss weight
    of each target frame [B, T] (0 = no target; the clip's ``weight``, else 1).

    Augmentation works on mel power (``10 ** (4 x - 4)``): a gain scales it, white noise and
    silence are their expected mel power (exact for digital silence and gain above the floor).
    """
    r, la, t = prior.receptive_field, prior.lookahead, hp.window
    sizes = np.array([c.num_frames for c in clips], float)
    noise = _white_noise_mel()  # [80]
    feats, targets, masks = [], [], []
    prepared = [c.targets() for c in clips]
    for _ in range(hp.batch):
        ci = rng.choice(len(clips), p=sizes / sizes.sum())
        c, (norm_targets, target_valid) = clips[ci], prepared[ci]
        start = int(rng.integers(-(t // 4), max(1, c.num_frames - 3 * t // 4)))  # outputs [start, start + t)
        f0, f1 = start - (r - 1 - la), start + t + la  # input frames
        x = np.full((f1 - f0, *c.features.shape[1:]), A.SILENCE_VALUE, np.float32)
        a0, a1 = max(f0, 0), min(f1, c.num_frames)
        if a1 > a0:
            x[a0 - f0 : a1 - f0] = c.features[a0:a1]
        tgt = np.zeros((t, len(SPEECH_CHANNELS)), np.float32)
        mask = np.ones(t, np.float32)  # frames outside the clip are silent: rest pose
        o0, o1 = max(start, 0), min(start + t, c.num_frames)
        if o1 > o0:
            tgt[o0 - start : o1 - start] = norm_targets[o0:o1]
            w = c.weight[o0:o1] if c.weight is not None else 1.0
            mask[o0 - start : o1 - start] = target_valid[o0:o1] * w
        power = np.where(x > A.SILENCE_VALUE, 10.0 ** (4.0 * x - 4.0), 0.0)  # [T', 4, 80]
        power *= 10 ** (rng.uniform(-hp.gain_db, hp.gain_db) / 10)
        bands = np.arange(power.shape[-1], dtype=np.float64)
        if hp.warp > 0:
            src = np.clip(bands / rng.uniform(1 - hp.warp, 1 + hp.warp), 0, len(bands) - 1)
            lo = np.floor(src).astype(int)
            hi = np.minimum(lo + 1, len(bands) - 1)
            power = power[..., lo] * (1 - (src - lo)) + power[..., hi] * (src - lo)
        if hp.tilt_db > 0:
            power = power * 10 ** (rng.uniform(-hp.tilt_db, hp.tilt_db) / 10 * (bands / bands[-1] - 0.5))
        if rng.random() < hp.noise_prob:
            power += power.mean() / noise.mean() * 10 ** (-rng.uniform(20, 50) / 10) * noise
        if rng.random() < hp.silence_prob:
            length = int(rng.integers(hp.silence_frames[0], hp.silence_frames[1] + 1))
            s0 = int(rng.integers(-length // 2, t - length // 2))  # in output frames of the window
            i0, i1 = max(s0 + r - 1 - la, 0), min(s0 + length + r - 1 - la, len(power))
            power[i0:i1] = 0.0
            if rng.random() < 0.5:
                power[i0:i1] = 10 ** (rng.uniform(-100, -60) / 10) * noise
            q0, q1 = max(s0, 0), min(s0 + length, t)
            tgt[q0:q1] = 0.0
            mask[q0:q1] = 1.0
        feats.append((np.log10(np.maximum(power, A.LOG_FLOOR)) + 4.0) / 4.0)
        targets.append(tgt)
        masks.append(mask)
    return np.stack(feats).astype(np.float32), np.stack(targets), np.stack(masks)


def _loss(prior: AudioMotionPrior, u: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor, hp: TrainHyper) -> torch.Tensor:
    w = torch.ones(u.shape[-1], device=u.device)
    w[JAW_OPEN] = hp.jaw_weight
    m = mask.float()[..., None]  # [B, T, 1]
    err = F.smooth_l1_loss(u, tgt, reduction="none", beta=0.5) * w
    loss = (err * m).sum() / (m.sum() * w.sum()).clamp_min(1)
    mv = m[:, 1:] * m[:, :-1]
    dv = F.smooth_l1_loss(u[:, 1:] - u[:, :-1], tgt[:, 1:] - tgt[:, :-1], reduction="none", beta=0.5) * w
    return loss + hp.velocity_weight * (dv * mv).sum() / (mv.sum() * w.sum()).clamp_min(1)


def _fit(
    prior: AudioMotionPrior,
    clips: Sequence[SpeakerClip],
    hp: TrainHyper,
    device: str | torch.device,
    progress: bool = True,
) -> list[float]:
    """Train ``prior`` in place on ``clips``; returns the loss curve (mean per 50 steps)."""
    rng = np.random.default_rng(hp.seed)
    prior.to(device).train()
    opt = torch.optim.AdamW(prior.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    warm = max(1, hp.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, hp.steps) / hp.steps))
    )
    curve, acc = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=hp.steps, desc="prior", unit="step", leave=False)
    # dropout draws from torch's global generator, which torch seeds at random per process: inside
    # this block it is seeded from hp.seed (and restored after), so training is reproducible
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(hp.seed)
        for step in range(hp.steps):
            feats, tgt, mask = _batch(clips, prior, hp, rng)
            u = prior(torch.from_numpy(feats).to(device))
            loss = _loss(prior, u, torch.from_numpy(tgt).to(device), torch.from_numpy(mask).to(device), hp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
            opt.step()
            sched.step()
            acc.append(float(loss.detach()))
            if len(acc) == 50 or step == hp.steps - 1:
                curve.append(float(np.mean(acc)))
                acc = []
                if bar is not None:
                    bar.set_postfix(loss=f"{curve[-1]:.4f}")
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return curve


def _feature_stats(clips: Sequence[SpeakerClip]) -> tuple[np.ndarray, np.ndarray]:
    mels = np.concatenate([c.features.reshape(-1, c.features.shape[-1]) for c in clips])  # [4N, 80]
    return mels.mean(0).astype(np.float32), np.maximum(mels.std(0), 1e-3).astype(np.float32)


def generic_output_stats(clips: Sequence[SpeakerClip]) -> tuple[np.ndarray, np.ndarray]:
    """Rest pose and scale ``([M], [M])`` of the generic prior: the closed-mouth pose of all
    training frames pooled (per-channel median over the frames whose jawOpen is in the pooled
    lowest 5 %, so that silence sits below the training clips' 10th percentile of jawOpen) and
    the mean of the speakers' scales."""
    motion = np.concatenate([c.motion[c.valid] for c in clips])  # [sum N, M]
    jaw = motion[:, JAW_OPEN]
    rest = np.median(motion[jaw <= np.percentile(jaw, 5)], axis=0)
    return rest.astype(np.float32), np.mean([c.scale for c in clips], 0).astype(np.float32)


def train_prior(
    dataset_dirs: Sequence[Path],
    net: PriorNetConfig = PriorNetConfig(),
    hp: TrainHyper = TrainHyper(),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> AudioMotionPrior:
    """Train a generic prior on several speakers' datasets; ``train_info`` holds the summary."""
    if not dataset_dirs:
        raise UserError("no datasets given to train the prior on")
    t0 = time.perf_counter()
    clips = [load_clip(Path(d), net.encoder, hp.max_offset) for d in dataset_dirs]
    torch_gen = torch.Generator().manual_seed(hp.seed)
    prior = AudioMotionPrior(net)
    with torch.no_grad():  # re-initialise from this run's own generator (no global seeding)
        for p in prior.parameters():
            if p.dim() > 1:
                bound = 1.0 / math.sqrt(p[0].numel())
                p.copy_(torch.rand(p.shape, generator=torch_gen) * 2 * bound - bound)
            else:
                p.zero_()
        for norm in prior.norms:
            norm.weight.fill_(1.0)
        mean, std = _feature_stats(clips)
        prior.feat_mean.copy_(torch.from_numpy(mean))
        prior.feat_std.copy_(torch.from_numpy(std))
        rest, scale = generic_output_stats(clips)
        prior.rest.copy_(torch.from_numpy(rest))
        prior.scale.copy_(torch.from_numpy(scale))
    curve = _fit(prior, clips, hp, device, progress)
    prior.eval()
    prior.train_info = {
        "datasets": [c.name for c in clips],
        "av_offsets": {c.name: c.offset for c in clips},
        "frames": int(sum(c.num_frames for c in clips)),
        "hyper": {**asdict(hp), "silence_frames": list(hp.silence_frames)},
        "loss_curve": [round(x, 5) for x in curve],
        "seconds": round(time.perf_counter() - t0, 1),
        "jaw_open_p10": float(np.percentile(np.concatenate([c.motion[c.valid, JAW_OPEN] for c in clips]), 10)),
    }
    return prior


def finetune_prior(
    prior: AudioMotionPrior,
    dataset_dirs: Sequence[Path],
    steps: int = 300,
    device: str | torch.device = "cpu",
    hp: TrainHyper | None = None,
    split: str | None = "train",
    match_spread: bool = True,
    closure_weight: float = 0.0,
    voice_match: float = 1.0,
    contrast: float = 0.0,
    contrast_away: float = 0.0,
) -> AudioMotionPrior:
    """Adapt a (generic) prior to one identity: returns a new prior, ``prior`` is left unchanged.

    The output mapping takes the identity's own rest pose and scale (from its tracks), then the net
    is trained ``steps`` steps on the identity's datasets at a tenth of the training learning rate,
    then (``match_spread``) its output is widened to the identity's articulation
    (:func:`match_articulation`). With ``closure_weight`` > 0 the frames of the identity's /p b m/
    (phones aligned on its English audio, :func:`bilabial_weights`) weigh ``1 + closure_weight``
    in the loss. Only the frames of ``split`` (default the train split; None = all) are used, so
    the validation frames stay unseen. The tuned prior keeps the identity's mean spectrum and
    moves a driving voice's ``voice_match`` of the way to it, and carries the syllable contrast
    ``contrast`` toward rest and ``contrast_away`` away from it (module docstring; 0 = off, for all).
    """
    hp = hp or TrainHyper(steps=steps, lr=2e-4)
    if hp.steps != steps:
        hp = TrainHyper(**{**asdict(hp), "steps": steps})
    clips = [load_clip(Path(d), prior.config.encoder, hp.max_offset, split) for d in dataset_dirs]
    if not clips:
        raise UserError("no datasets given to fine-tune the prior on")
    if closure_weight > 0:
        clips = [replace(c, weight=bilabial_weights(Path(d), c.num_frames, closure_weight))
                 for c, d in zip(clips, dataset_dirs)]
    tuned = copy.deepcopy(prior).to(device)
    with torch.no_grad():
        tuned.rest.copy_(torch.from_numpy(np.mean([c.rest for c in clips], 0)))
        tuned.scale.copy_(torch.from_numpy(np.mean([c.scale for c in clips], 0)))
    if steps > 0:
        _fit(tuned, clips, hp, device, progress=False)
    tuned.train_info = {**prior.train_info, "finetuned_on": [c.name for c in clips], "finetune_steps": steps}
    if match_spread:
        gains = match_articulation(tuned.eval(), clips)
        tuned.train_info["articulation_gain"] = [round(float(g), 3) for g in gains]
    own_voice = voice_spectrum(tuned, [c.features for c in clips])
    if own_voice is None:  # a silent clip: there is no voice to match to
        voice_match = 0.0
    else:
        with torch.no_grad():
            tuned.voice_mean.copy_(torch.from_numpy(own_voice))
    tuned.voice_match.fill_(float(voice_match))
    tuned.train_info["voice_match"] = float(voice_match)
    tuned.contrast.fill_(float(contrast))
    tuned.contrast_away.fill_(float(contrast_away))
    tuned.train_info["contrast"] = float(contrast)
    tuned.train_info["contrast_away"] = float(contrast_away)
    return tuned.eval()


def voice_spectrum(prior: AudioMotionPrior, features: Sequence[np.ndarray]) -> np.ndarray | None:
    """A voice's mean log-mel spectrum ``[F]`` over the sounding frames (:func:`sounding_frames`)
    of ``features`` (each ``[N, W, F]``), as :class:`VoiceMatch` averages a driving voice; None
    when no frame sounds."""
    frames = np.concatenate([np.asarray(f, np.float64) for f in features])
    sounding = sounding_frames(prior, frames)
    if not sounding.any():
        return None
    return frames[sounding].mean(axis=(0, 1)).astype(np.float32)


MAX_ARTICULATION_GAIN = 2.5


def bilabial_weights(root: Path, num_frames: int, extra: float) -> np.ndarray:
    """``[N]`` loss weights of a dataset's frames: ``1 + extra`` on its /p b m/ segments (+- 1
    frame, phones aligned on audio.wav: English only, see :mod:`avatar3d.audio.phones`), 1 elsewhere."""
    from avatar3d.audio.phones import BILABIALS, phone_segments

    weights = np.ones(num_frames, np.float32)
    for p in phone_segments(A.load_audio(DatasetPaths(Path(root)).audio)):
        if p.name in BILABIALS:
            a, b = max(0, int(np.floor(p.start * FPS)) - 1), min(num_frames, int(np.ceil(p.end * FPS)) + 1)
            weights[a:b] = 1.0 + extra
    return weights


@torch.no_grad()
def match_articulation(prior: AudioMotionPrior, clips: Sequence[SpeakerClip]) -> np.ndarray:
    """Undo the prior's regression to the mean on one identity, in place: per channel, widen its
    output around the median of what it predicts while speaking, so that the spread (p95 - p5) of
    its predictions on the clips' sounding, tracked frames matches the spread of the tracked codes
    there (frames below the median, such as closures, go further down; open vowels further up).
    It is an affine change of the output layer, so streaming and offline inference keep agreeing;
    silence (the gate shut) still gives exactly ``rest``. Gains are clamped to
    [1, MAX_ARTICULATION_GAIN]: a prior is only ever widened. Returns the gains ``[M]``."""
    pred, true = [], []
    for clip in clips:
        motion, valid = shift_tracks(clip.motion, clip.valid, clip.offset)
        sounding = valid & sounding_frames(prior, clip.features)
        if sounding.sum() < 25:
            continue
        pred.append(predict_motion(prior, clip.features, normalised=True)[sounding])
        true.append((motion[sounding] - prior.rest.cpu().numpy()) / prior.scale.cpu().numpy())
    if not pred:
        return np.ones(prior.scale.shape[0], np.float32)
    u, t = np.concatenate(pred), np.concatenate(true)  # normalised units
    spread = lambda x: np.percentile(x, 95, axis=0) - np.percentile(x, 5, axis=0)  # noqa: E731
    gains = np.clip(spread(t) / np.maximum(spread(u), 1e-4), 1.0, MAX_ARTICULATION_GAIN).astype(np.float32)
    centre = np.median(u, axis=0).astype(np.float32)
    g, c = torch.from_numpy(gains), torch.from_numpy(centre)
    dev = prior.out.weight.device
    prior.out.weight.mul_(g.to(dev)[:, None, None])  # u' = g u + (1 - g) centre
    prior.out.bias.copy_(g.to(dev) * prior.out.bias + (1 - g.to(dev)) * c.to(dev))
    return gains


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate_clip(prior: AudioMotionPrior, clip: SpeakerClip) -> dict:
    """Correlation of the predicted and tracked motion over a clip's tracked frames.

    ``*_r``: against the tracks as they are (lag 0). ``*_r_offset``: against the tracks shifted
    by the clip's measured audio/mouth offset ``clip.offset`` (equal when it is 0).
    """
    pred = predict_motion(prior, clip.features)  # [N, M]
    out: dict = {"clip": clip.name, "av_offset_frames": clip.offset}
    for suffix, lag in (("", 0), ("_offset", clip.offset)):
        motion, v = shift_tracks(clip.motion, clip.valid, lag)
        rs = {}
        for k, name in enumerate(SPEECH_CHANNELS):
            if motion[v, k].std() > 1e-3:  # channels the speaker actually moves
                r = pearson(pred[v, k], motion[v, k])
                if np.isfinite(r):  # (a prediction clipped constant has no correlation)
                    rs[name] = r
        out["frames" + suffix] = int(v.sum())
        out["jawOpen_r" + suffix] = rs.get("jawOpen", float("nan"))
        out["mouth_mean_r" + suffix] = float(np.mean(list(rs.values())))
        out["mouth_channels" + suffix] = len(rs)
        out["per_channel_r" + suffix] = {k: round(x, 4) for k, x in rs.items()}
    return out


# ----------------------------------------------------------------------------------------------
# CLI: avatar3d prior train | predict


@dataclass(frozen=True)
class PriorTrainConfig:
    """Train the generic audio-to-motion prior on `avatar3d preprocess` datasets."""

    datasets: tuple[Path, ...]
    """Dataset folders made by `avatar3d preprocess` (several speakers)."""
    output: Path = Path("prior.pt")
    """Where to write the weights (atomically)."""
    device: str = "cpu"
    """Torch device to train on (cpu, cuda, cuda:1, ...)."""
    net: PriorNetConfig = PriorNetConfig()
    """Network shape."""
    hyper: TrainHyper = TrainHyper()
    """Optimisation and augmentation."""


@dataclass(frozen=True)
class PriorPredictConfig:
    """Predict the motion code of an audio (or video) file with the prior."""

    audio: Path
    """Audio or video file with the speech."""
    output: Path = Path("motion.npy")
    """Output .npy: [N, M] float32 motion code at 25 fps (columns: avatar3d.core.vocab.SPEECH_CHANNELS)."""
    weights: Path | None = None
    """Prior weights (default: the ones shipped with avatar3d)."""
    device: str = "cpu"
    """Torch device."""


@dataclass(frozen=True)
class PriorCommand:
    """The audio-to-motion prior: train it, or run it on audio."""

    command: tyro.conf.OmitSubcommandPrefixes[
        Union[
            Annotated[PriorTrainConfig, tyro.conf.subcommand("train")],
            Annotated[PriorPredictConfig, tyro.conf.subcommand("predict")],
        ]
    ]


def run_prior(config: PriorCommand) -> None:
    cmd = config.command
    if isinstance(cmd, PriorTrainConfig):
        if cmd.output.suffix != ".pt":
            raise UserError(f"prior weights are written as a .pt file, got {cmd.output}")
        prior = train_prior(cmd.datasets, cmd.net, cmd.hyper, cmd.device)
        save_prior(prior, cmd.output)
        size = cmd.output.stat().st_size / 1e6
        print(
            f"prior: trained on {len(cmd.datasets)} datasets ({prior.train_info['frames']} frames) in "
            f"{prior.train_info['seconds']:.0f} s, final loss {prior.train_info['loss_curve'][-1]:.4f}; "
            f"wrote {cmd.output} ({size:.1f} MB)"
        )
    else:
        audio = A.load_audio(cmd.audio)  # [S]
        prior = load_prior(cmd.weights, cmd.device)
        motion = predict_motion_from_audio(prior, audio)
        with atomic_file(cmd.output, "wb") as f:
            np.save(f, motion)
        print(f"prior: {len(motion)} frames of motion ({len(SPEECH_CHANNELS)} channels) -> {cmd.output}")

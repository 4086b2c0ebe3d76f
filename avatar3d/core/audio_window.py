"""The encoder of a window of audio features, for the fields that listen to audio besides the motion code."""
from __future__ import annotations

import torch
import torch.nn as nn

# names its weights had inside the Gaussian face field before it was shared (runs fitted then load)
_OLD_NAMES = {"audio_net.": "audio.frames.", "audio_time_attn.": "audio.time_attn.", "audio_out.": "audio.out."}


class AudioWindowEncoder(nn.Module):
    """Audio features of a window of frames [B, W, A] -> [B, out]: each frame through a small MLP
    (A -> hidden -> hidden, LeakyReLU), a softmax attention over the window's frames, and a linear
    layer to ``out``."""

    def __init__(self, feature_dim: int, hidden: int, out: int):
        super().__init__()
        self.frames = nn.Sequential(nn.Linear(feature_dim, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, hidden))
        self.time_attn = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden, out)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.frames(audio)  # [B, W, H]
        w = torch.softmax(self.time_attn(h), dim=1)  # [B, W, 1]
        return self.out((w * h).sum(1))


def renamed_state(state: dict, prefix: str) -> dict:
    """``state`` with the encoder's weights under ``prefix`` saved by avatar3d before the encoder
    was shared renamed to today's names."""
    out = {}
    for k, v in state.items():
        for old, new in _OLD_NAMES.items():
            if k.startswith(prefix + old):
                k = prefix + new + k[len(prefix + old):]
                break
        out[k] = v
    return out

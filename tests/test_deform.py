"""The face deformation field's conditioning: which blendshapes may move which part of the face."""
from __future__ import annotations

import pytest
import torch

from avatar3d.core.vocab import BLENDSHAPE_NAMES, SPEECH_CHANNELS, blendshape_index
from avatar3d.core.motion import MotionStats
from avatar3d.gaussian.deform import DeformConfig, FaceDeformer


def _field(stats: MotionStats | None = None) -> FaceDeformer:
    """A field whose lower face starts at canonical y = 0, reading blendshapes that vary by ~0.05
    (standardised inputs of order 1), unclamped unless ``stats`` say otherwise."""
    config = DeformConfig(num_levels=2, log2_table_size=8, max_resolution=32, hidden=16, cond_dim=8)
    M = len(BLENDSHAPE_NAMES)
    stats = stats or MotionStats.unclamped(torch.zeros(M), torch.full((M,), 0.05))
    field = FaceDeformer(config, None, torch.full((3,), -10.0), torch.full((3,), 10.0), stats, lower_face_y=0.0)
    g = torch.Generator().manual_seed(0)
    field.reset_parameters(g)
    with torch.no_grad():  # a field that has learned something: the last layer is no longer zero
        field.mlp[-1].weight.normal_(0, 0.5, generator=g)
    return field


def test_eye_and_brow_channels_do_not_reach_the_lower_face():
    """At render time the prior drives the speech channels and the pose trajectory the others,
    from different frames: the lips must not depend on the eyes."""
    field = _field()
    points = torch.tensor([[0.0, -5.0, 0.0], [0.0, 5.0, 0.0]])  # above / below the base of the nose (y down)
    a = torch.zeros(1, len(BLENDSHAPE_NAMES))
    b = a.clone()
    b[0, blendshape_index("eyeBlinkLeft")] = 1.0
    b[0, blendshape_index("browInnerUp")] = 1.0
    with torch.no_grad():
        da, db = field(points, a, None), field(points, b, None)
    upper_change = (da.d_means[0, 0] - db.d_means[0, 0]).abs().max()
    lower_change = (da.d_means[0, 1] - db.d_means[0, 1]).abs().max()
    assert upper_change > 1e-2 and lower_change < 1e-3 * float(upper_change), (upper_change, lower_change)


def _lower_face_change(field: FaceDeformer, channel: str, value: float) -> float:
    """How far a lower-face point moves when ``channel`` goes from 0 to ``value``."""
    points = torch.tensor([[0.0, 5.0, 0.0]])
    a = torch.zeros(1, len(BLENDSHAPE_NAMES))
    b = a.clone()
    b[0, blendshape_index(channel)] = value
    with torch.no_grad():
        return float((field(points, a, None).d_means - field(points, b, None).d_means).abs().max())


def test_speech_channels_move_the_lower_face():
    assert "jawOpen" in SPEECH_CHANNELS
    assert _lower_face_change(_field(), "jawOpen", 1.0) > 1e-2


def test_the_code_is_clamped_to_the_range_it_was_fitted_on():
    """Beyond the training frames' 0.5-99.5 % range a channel acts as at the range's edge (the
    field extrapolates badly there); within it nothing is clamped."""
    points = torch.tensor([[0.0, 5.0, 0.0]])
    k = blendshape_index("mouthShrugLower")
    g = torch.Generator().manual_seed(1)
    train = torch.rand(1000, len(BLENDSHAPE_NAMES), generator=g) * 0.5  # every channel in [0, 0.5)
    field = _field(MotionStats.of_codes(train))
    lo, hi = float(field.motion_lo[k]), float(field.motion_hi[k])
    assert 0.0 <= lo < 0.01 and 0.49 < hi <= 0.5

    def moved(value: float) -> torch.Tensor:
        code = torch.full((1, len(BLENDSHAPE_NAMES)), 0.25)
        code[0, k] = value
        with torch.no_grad():
            return field(points, code, None).d_means

    assert torch.equal(moved(0.93), moved(hi)) and torch.equal(moved(-0.5), moved(lo))
    assert (moved(0.4) - moved(0.1)).abs().max() > 1e-3  # inside the range the channel still acts


def test_a_field_without_a_fitted_range_does_not_clamp():
    """Unclamped, a channel keeps acting far beyond any training range: jawOpen at 50 moves the
    lower face otherwise than at 2 (clamped to [0, 1], both would act as 1)."""
    field = _field()
    assert abs(_lower_face_change(field, "jawOpen", 50.0) - _lower_face_change(field, "jawOpen", 2.0)) > 1e-3
    clamped = _field(MotionStats(torch.zeros(52), torch.full((52,), 0.05), torch.zeros(52), torch.ones(52)))
    assert _lower_face_change(clamped, "jawOpen", 50.0) == _lower_face_change(clamped, "jawOpen", 2.0)


def test_the_motion_code_must_be_the_52_blendshapes():
    config = DeformConfig(num_levels=2, log2_table_size=8, max_resolution=32, hidden=16, cond_dim=8)
    with pytest.raises(ValueError, match="52"):
        FaceDeformer(config, None, torch.zeros(3), torch.ones(3), MotionStats.unclamped(torch.zeros(30), torch.ones(30)), 0.0)


def test_audio_weights_saved_under_their_old_names_still_load():
    """Runs fitted before the audio-window encoder was shared saved it as audio_net/audio_time_attn/audio_out."""
    from avatar3d.core.audio_window import renamed_state

    config = DeformConfig(num_levels=2, log2_table_size=8, max_resolution=32, hidden=16, cond_dim=8)
    M = len(BLENDSHAPE_NAMES)
    stats = MotionStats.unclamped(torch.zeros(M), torch.ones(M))
    field = FaceDeformer(config, (4, 6), torch.zeros(3), torch.ones(3), stats, 0.0)
    state = {f"face_deform.{k}": v + 1 for k, v in field.state_dict().items()}
    old = {k.replace("audio.frames.", "audio_net.").replace("audio.time_attn.", "audio_time_attn.")
           .replace("audio.out.", "audio_out."): v for k, v in state.items()}
    assert old.keys() != state.keys()
    assert renamed_state(old, "face_deform.").keys() == state.keys()
    field.load_state_dict({k[len("face_deform."):]: v for k, v in renamed_state(old, "face_deform.").items()})
    torch.testing.assert_close(field.audio.out.weight, state["face_deform.audio.out.weight"])

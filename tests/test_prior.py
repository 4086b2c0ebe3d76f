"""The audio-to-motion prior: architecture, streaming, training, fine-tuning, the shipped weights."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from avatar3d.audio import features as A
from avatar3d.audio import prior as P
from avatar3d.cli import main as cli_main
from avatar3d.core.dataset import AUDIO_RATE, FORMAT_VERSION, DatasetPaths, Manifest, default_split
from avatar3d.core.vocab import BLENDSHAPE_NAMES
from avatar3d.errors import UserError
from avatar3d.fsutil import write_json

EXPECTED = Path(__file__).parent / "data" / "prior_expected.json"
TINY = P.PriorNetConfig(hidden=24, dilations=(1, 2, 4), lookahead=2, dropout=0.0)


def speechlike(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Syllable-like bursts (harmonic tone x smooth envelope) and the per-frame envelope.

    Returns audio [S] float32 and envelope [N] in [0, 1] (N = S // 640).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * 25)
    env = np.zeros(n)
    i = 0
    while i < n:
        length = int(rng.integers(4, 12))
        if rng.random() < 0.7:
            env[i : i + length] = np.sin(np.linspace(0, np.pi, min(length, n - i))) * rng.uniform(0.4, 1.0)
        i += length
    t = np.arange(n * 640) / AUDIO_RATE
    f0 = rng.uniform(100, 220)
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
    env_s = np.interp(t * 25 - 0.5, np.arange(n), env)
    audio = 0.15 * env_s * tone + 0.002 * rng.standard_normal(len(t))
    return audio.astype(np.float32), env


def make_dataset(root: Path, seconds: float, seed: int, jaw_gain: float) -> Path:
    """A synthetic `avatar3d preprocess` dataset whose jawOpen follows the audio envelope."""
    audio, env = speechlike(seconds, seed)
    n = len(env)
    paths = DatasetPaths(root)
    root.mkdir(parents=True)
    sf.write(paths.audio, audio, AUDIO_RATE, subtype="PCM_16")
    rng = np.random.default_rng(seed + 100)
    bs = np.clip(rng.normal(0.05, 0.002, (n, len(BLENDSHAPE_NAMES))), 0, 1).astype(np.float32)
    bs[:, BLENDSHAPE_NAMES.index("jawOpen")] = 0.02 + jaw_gain * env
    bs[:, BLENDSHAPE_NAMES.index("mouthClose")] = 0.1 * (1 - env)
    valid = np.ones(n, bool)
    valid[5:8] = False
    np.savez_compressed(paths.tracks, blendshapes=bs, valid=valid, interpolated=~valid)
    m = Manifest(
        format_version=FORMAT_VERSION, source_name=f"synthetic{seed}.mp4", source_sha256="0" * 64,
        source_fps=25.0, source_duration=n / 25, fps=25, size=64, num_frames=n, crop=(0, 0, 64),
        split=default_split(n),
    )
    write_json(paths.manifest, m.to_json())
    return root


def random_prior(config: P.PriorNetConfig = TINY) -> P.AudioMotionPrior:
    torch.manual_seed(0)  # test-local determinism of the random init only
    return P.AudioMotionPrior(config).eval()


def test_motion_names_are_mouth_blendshapes():
    assert len(set(P.SPEECH_CHANNELS)) == len(P.SPEECH_CHANNELS) == 28
    assert all(n.startswith(("jaw", "mouth", "cheekPuff")) for n in P.SPEECH_CHANNELS)
    bs = np.random.default_rng(0).random((5, 52)).astype(np.float32)
    m = P.motion_from_blendshapes(bs)
    assert m[:, P.JAW_OPEN].tolist() == bs[:, BLENDSHAPE_NAMES.index("jawOpen")].tolist()
    back = P.blendshapes_from_motion(m, base=np.full(52, 0.5))
    np.testing.assert_array_equal(back[:, list(P.SPEECH_INDEX)], m)
    assert back[0, BLENDSHAPE_NAMES.index("eyeBlinkLeft")] == 0.5


def test_receptive_field_and_lookahead():
    prior = random_prior()
    r, la = prior.receptive_field, prior.lookahead
    assert r == 1 + 2 * (1 + 2 + 4) and la == 2
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 0.5, (60, 4, 80)).astype(np.float32)
    base = P.predict_motion(prior, feats, normalised=True)
    assert base.shape == (60, len(P.SPEECH_CHANNELS))
    k = 40
    changed = feats.copy()
    changed[k] += 1.0
    out = P.predict_motion(prior, changed, normalised=True)
    diff = np.abs(out - base).max(axis=1)
    # frame k is seen by outputs k - lookahead ... k + (R - 1 - lookahead) and no others
    assert np.all(diff[: k - la] == 0)
    assert np.all(diff[k - la : k + r - la] > 0)
    assert np.all(diff[k + r - la :] == 0)


def test_streaming_matches_offline():
    prior = random_prior()
    audio, _ = speechlike(3.0, seed=2)
    offline = P.predict_motion_from_audio(prior, audio)
    stream = P.PriorStream(prior)
    outs = []
    for i in range(0, len(audio), 320):  # 20 ms chunks
        out = stream.push(audio[i : i + 320])
        outs.append(out)
        # bounded look-ahead: frame j is out once audio through frame j + 2 is in
        assert stream.frames_out == max(0, (i + 320) // 640 - prior.lookahead)
    outs.append(stream.flush())
    online = np.concatenate(outs)
    assert online.shape == offline.shape
    np.testing.assert_allclose(online, offline, atol=1e-4)


def voice_matched_prior(audio: np.ndarray) -> P.AudioMotionPrior:
    """A random prior matching driving voices to the voice of ``audio`` [S]."""
    prior = random_prior()
    with torch.no_grad():
        prior.voice_mean.copy_(torch.from_numpy(P.voice_spectrum(prior, [A.encode("mel", audio)])))
        prior.voice_match.fill_(1.0)
    return prior


def recorded_otherwise(audio: np.ndarray) -> np.ndarray:
    """The same speech through another microphone and gain: a first-order high-pass tilt, -8 dB."""
    return (0.4 * np.concatenate([audio[:1], audio[1:] - 0.7 * audio[:-1]])).astype(np.float32)


def test_voice_matching_streams_like_offline():
    audio, _ = speechlike(4.0, seed=2)
    prior = voice_matched_prior(speechlike(6.0, seed=3)[0])
    driving = recorded_otherwise(audio)
    offline = P.predict_motion_from_audio(prior, driving)
    stream = P.PriorStream(prior)
    online = np.concatenate([stream.push(driving[i : i + 320]) for i in range(0, len(driving), 320)] + [stream.flush()])
    np.testing.assert_allclose(online, offline, atol=1e-4)
    with torch.no_grad():
        prior.voice_match.fill_(0.0)
    assert np.abs(P.predict_motion_from_audio(prior, driving) - offline).max() > 1e-3  # it does change something


def test_voice_matching_undoes_a_recording_difference():
    """The same speech recorded otherwise reads, once a second or two of it has been heard, much as
    the identity's own recording does; without matching it reads differently throughout."""
    audio, _ = speechlike(8.0, seed=4)
    prior = voice_matched_prior(audio)
    feats, other = A.encode("mel", audio), A.encode("mel", recorded_otherwise(audio))
    own = P.predict_motion(prior, feats, normalised=True)
    matched = P.predict_motion(prior, other, normalised=True)
    with torch.no_grad():
        prior.voice_match.fill_(0.0)
    unmatched = P.predict_motion(prior, other, normalised=True)
    err = lambda m: np.abs(m[75:] - own[75:]).mean()  # noqa: E731 (after 3 s)
    assert err(matched) < 0.3 * err(unmatched)


def test_voice_matching_keeps_silence_at_rest():
    """The gate reads the features as they came: a shift that would lift silence into the
    speech band leaves silent frames at exactly the rest pose."""
    audio, _ = speechlike(4.0, seed=6)
    prior = voice_matched_prior(audio)
    with torch.no_grad():
        prior.rest.uniform_(0.1, 0.3)
        prior.voice_mean.add_(1.0)  # the own voice 40 dB louder in every band
    audio[AUDIO_RATE : 2 * AUDIO_RATE] = 0.0
    m = P.predict_motion_from_audio(prior, audio)
    np.testing.assert_allclose(m[25:48], np.broadcast_to(prior.rest.numpy(), m[25:48].shape), atol=1e-6)


def test_a_silent_voice_has_no_spectrum_to_match():
    """A clip with no sounding frame gives no voice (fine-tuning then leaves matching off)."""
    prior = random_prior()
    silence = np.full((40, *prior.frame_shape), A.SILENCE_VALUE, np.float32)
    assert P.voice_spectrum(prior, [silence]) is None
    speech = A.encode("mel", speechlike(2.0, seed=5)[0])
    assert P.voice_spectrum(prior, [silence, speech]).shape == (80,)


def test_syllable_contrast_deepens_dips_causally():
    """Each frame moves k times its distance from the mean of its last CONTRAST_FRAMES frames (rest
    before the first); fed in pieces it gives the same; gated-shut frames stay at rest."""
    prior = random_prior()
    with torch.no_grad():
        prior.contrast.fill_(1.0)
        prior.contrast_away.fill_(1.0)
    v = np.zeros((12, len(P.SPEECH_CHANNELS)), np.float32)
    v[:, 0] = [0, 1, 1, 1, 1, 1, 0.2, 1, 1, 1, 1, 0.5]
    gate = np.ones(12)
    gate[-1] = 0.0
    whole = P.SyllableContrast(prior).apply(v, gate)
    expected = 2 * v[:, 0] - np.convolve(np.r_[np.zeros(P.CONTRAST_FRAMES - 1), v[:, 0]], np.ones(P.CONTRAST_FRAMES) / P.CONTRAST_FRAMES, "valid")
    expected[-1] = 0.0
    np.testing.assert_allclose(whole[:, 0], expected, atol=1e-6)
    assert whole[6, 0] < v[6, 0] - 0.5  # the dip between two syllables goes deeper
    pieces = P.SyllableContrast(prior)
    np.testing.assert_allclose(np.concatenate([pieces.apply(v[:5], gate[:5]), pieces.apply(v[5:], gate[5:])]), whole, atol=1e-6)
    with torch.no_grad():
        prior.contrast_away.fill_(0.0)  # one-sided: only the moves toward rest (0) are contrasted
    one_sided = P.SyllableContrast(prior).apply(v, gate)
    toward = (expected - v[:, 0]) * v[:, 0] <= 0  # the moves toward rest (a dip may cross it)
    np.testing.assert_allclose(one_sided[toward, 0], expected[toward], atol=1e-6)
    np.testing.assert_allclose(one_sided[~toward, 0], np.where(gate > 0, v[:, 0], 0.0)[~toward], atol=1e-6)
    assert one_sided[6, 0] == pytest.approx(whole[6, 0]) and one_sided[1, 0] == pytest.approx(1.0)  # dip deeper, peak kept
    with torch.no_grad():
        prior.contrast.fill_(0.0)
    np.testing.assert_array_equal(P.SyllableContrast(prior).apply(v, gate), v)  # off: unchanged


def test_syllable_contrast_streams_like_offline_and_keeps_silence_at_rest():
    prior = voice_matched_prior(speechlike(6.0, seed=3)[0])
    with torch.no_grad():
        prior.contrast.fill_(1.0)
        prior.contrast_away.fill_(0.5)
        prior.rest.uniform_(0.1, 0.3)
    audio, _ = speechlike(4.0, seed=6)
    audio[AUDIO_RATE : 2 * AUDIO_RATE] = 0.0  # frames 25 ... 49 digital silence
    offline = P.predict_motion_from_audio(prior, audio)
    stream = P.PriorStream(prior)
    online = np.concatenate([stream.push(audio[i : i + 320]) for i in range(0, len(audio), 320)] + [stream.flush()])
    np.testing.assert_allclose(online, offline, atol=1e-4)
    # every frame the gate shuts (own and look-ahead audio silent) is exactly rest, right after speech too
    np.testing.assert_allclose(offline[25:48], np.broadcast_to(prior.rest.numpy(), offline[25:48].shape), atol=1e-6)
    with torch.no_grad():
        prior.contrast.fill_(0.0)
        prior.contrast_away.fill_(0.0)
    plain = P.predict_motion_from_audio(prior, audio)
    spread = lambda m: np.percentile(m[:, P.JAW_OPEN], 95) - np.percentile(m[:, P.JAW_OPEN], 5)  # noqa: E731
    assert spread(offline) > spread(plain)  # syllables stand out more


def test_silence_gate_gives_rest_pose():
    prior = random_prior()
    with torch.no_grad():
        prior.rest.uniform_(0.1, 0.3)
    audio, _ = speechlike(4.0, seed=6)
    audio[AUDIO_RATE : 2 * AUDIO_RATE] = 0.0  # frames 25 ... 49 digital silence
    audio[3 * AUDIO_RATE :] = np.random.default_rng(7).standard_normal(AUDIO_RATE) * 10 ** (-85 / 20)
    m = P.predict_motion_from_audio(prior, audio)
    rest = prior.rest.numpy()
    # every output frame whose own and look-ahead audio is silent sits exactly at rest
    np.testing.assert_allclose(m[25:48], np.broadcast_to(rest, m[25:48].shape), atol=1e-6)
    assert np.abs(m[24] - rest).max() > 1e-3
    np.testing.assert_allclose(m[75:], np.broadcast_to(rest, m[75:].shape), atol=1e-6)
    assert np.abs(m[:20] - rest).max(axis=1).min() > 1e-3  # speech is not gated


def test_bad_features_and_weights_are_user_errors(tmp_path):
    prior = random_prior()
    with pytest.raises(UserError, match=r"features \[N, 4, 80\]"):
        P.predict_motion(prior, np.zeros((10, 80), np.float32))
    with pytest.raises(UserError, match="not found"):
        P.load_prior(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read prior weights"):
        P.load_prior(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an avatar3d prior"):
        P.load_prior(tmp_path / "other.pt")


def test_save_load_roundtrip(tmp_path):
    prior = random_prior()
    assert prior.train_info == {}
    prior.train_info = {"note": "x"}
    with torch.no_grad():
        prior.voice_mean.uniform_(-0.5, 0.0)
        prior.voice_match.fill_(0.5)
        prior.contrast.fill_(0.75)
        prior.contrast_away.fill_(0.25)
    P.save_prior(prior, tmp_path / "p.pt")
    loaded = P.load_prior(tmp_path / "p.pt")
    feats = np.random.default_rng(3).normal(0, 0.5, (30, 4, 80)).astype(np.float32)
    np.testing.assert_array_equal(P.predict_motion(prior, feats), P.predict_motion(loaded, feats))
    assert float(loaded.voice_match) == 0.5 and np.all(loaded.contrast.numpy() == 0.75)
    assert np.all(loaded.contrast_away.numpy() == 0.25)
    assert loaded.train_info == {"note": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]  # no temp file left behind
    # weights from before the two sides of the contrast computed one contrast both ways
    old = torch.load(tmp_path / "p.pt", weights_only=True)
    del old["state_dict"]["contrast_away"]
    torch.save(old, tmp_path / "old.pt")
    assert np.all(P.load_prior(tmp_path / "old.pt").contrast_away.numpy() == 0.75)


def test_speaker_stats():
    rng = np.random.default_rng(4)
    motion = rng.random((200, len(P.SPEECH_CHANNELS))).astype(np.float32) * 0.2
    motion[:20, P.JAW_OPEN] = 0.0  # the 10 % closed frames
    motion[:20, 1] = 0.7
    valid = np.ones(200, bool)
    rest, scale = P.speaker_stats(motion, valid)
    assert rest[P.JAW_OPEN] == 0.0 and rest[1] == pytest.approx(0.7)
    assert np.all(scale >= P.MIN_SCALE)
    np.testing.assert_allclose(scale[2], motion[:, 2].std(), rtol=1e-5)
    with pytest.raises(UserError, match="too few tracked frames"):
        P.speaker_stats(motion, np.zeros(200, bool))
    # with the lips' gap measured, rest is where the lips are shut, not where the jaw is lowest
    opening = np.full(200, 0.05)
    opening[:20] = 0.02  # jaw closed, lips apart
    opening[100:110] = 0.001  # lips pressed shut, jaw a little open
    opening[150] = np.nan  # a frame the tracker lost
    motion[100:110, 1] = 0.3
    rest, _ = P.speaker_stats(motion, valid, opening)
    assert rest[1] == pytest.approx(0.3) and rest[P.JAW_OPEN] > 0.0
    rest, _ = P.speaker_stats(motion, valid, np.full(200, np.nan))  # nothing measured: by jawOpen
    assert rest[P.JAW_OPEN] == 0.0


@pytest.fixture(scope="module")
def synthetic_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior_sets")
    return [make_dataset(root / f"spk{k}", 24.0, seed=10 + k, jaw_gain=g) for k, g in enumerate((0.3, 0.6, 0.45))]


@pytest.fixture(scope="module")
def trained(synthetic_sets, tmp_path_factory):
    """A tiny prior trained through the CLI on two synthetic speakers."""
    out = tmp_path_factory.mktemp("prior_out") / "tiny.pt"
    args = ["prior", "train", "--datasets", *map(str, synthetic_sets[:2]), "--output", str(out),
            "--net.hidden", "24", "--net.dilations", "1", "2", "4", "--net.dropout", "0",
            "--hyper.steps", "100", "--hyper.batch", "8", "--hyper.window", "48", "--hyper.lr", "5e-3"]
    assert cli_main(args) == 0
    return P.load_prior(out)


def test_training_learns_unseen_speaker(trained, synthetic_sets):
    info = trained.train_info
    assert info["datasets"] == ["spk0", "spk1"]
    assert info["loss_curve"][-1] < 0.5 * info["loss_curve"][0]
    held_out = P.load_clip(synthetic_sets[2])
    result = P.evaluate_clip(trained, held_out)
    assert result["jawOpen_r"] > 0.8, result
    # the generic output mapping: pooled closed-mouth pose, mean of the speakers' scales
    clips = [P.load_clip(d) for d in synthetic_sets[:2]]
    rest, scale = P.generic_output_stats(clips)
    np.testing.assert_allclose(trained.rest.numpy(), rest, rtol=1e-6)
    np.testing.assert_allclose(trained.scale.numpy(), np.mean([c.scale for c in clips], 0), rtol=1e-6)
    pooled = np.concatenate([c.motion[:, P.JAW_OPEN] for c in clips])
    assert rest[P.JAW_OPEN] <= np.percentile(pooled, 10)


def test_trained_prior_closes_mouth_in_silence(trained):
    audio, _ = speechlike(6.0, seed=20)
    audio[2 * AUDIO_RATE : 4 * AUDIO_RATE] = 0.0
    jaw = P.predict_motion_from_audio(trained, audio)[:, P.JAW_OPEN]
    # synthetic speakers rest at exactly their 10th percentile: ask for the rest pose instead
    rest, scale = float(trained.rest[P.JAW_OPEN]), float(trained.scale[P.JAW_OPEN])
    assert np.abs(jaw[50:100] - rest).max() < 0.25 * scale
    assert np.median(jaw[:50]) > rest + 0.5 * scale


def test_finetune_adapts_output_range(trained, synthetic_sets):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    tuned = P.finetune_prior(trained, [synthetic_sets[2]], steps=20, device="cpu")
    for k, v in trained.state_dict().items():  # the generic prior is untouched
        torch.testing.assert_close(v, before[k])
    clip = P.load_clip(synthetic_sets[2], split="train")  # fine-tuning sees the train split only
    assert not clip.valid[P.read_manifest(synthetic_sets[2]).frame_indices("val")].any()
    np.testing.assert_allclose(tuned.rest.numpy(), clip.rest, rtol=1e-6)
    assert tuned.train_info["finetuned_on"] == ["spk2"]
    # it keeps the identity's voice, and matches driving voices to it (the generic prior does not)
    np.testing.assert_allclose(tuned.voice_mean.numpy(), P.voice_spectrum(tuned, [clip.features]))
    assert float(tuned.voice_match) == 1.0 and float(trained.voice_match) == 0.0
    assert not tuned.contrast.any()  # syllable contrast stays off unless asked
    sharp = P.finetune_prior(trained, [synthetic_sets[2]], steps=0, device="cpu", contrast=1.0, contrast_away=0.5)
    assert np.all(sharp.contrast.numpy() == 1.0) and sharp.train_info["contrast"] == 1.0
    assert np.all(sharp.contrast_away.numpy() == 0.5) and sharp.train_info["contrast_away"] == 0.5
    # the identity's own range: tuned predictions span its jaw range better than the generic ones
    span = lambda p: np.percentile(P.predict_motion(p, clip.features)[:, P.JAW_OPEN], [5, 95])
    true_span = np.percentile(clip.motion[:, P.JAW_OPEN], [5, 95])
    assert abs(np.diff(span(tuned))[0] - np.diff(true_span)[0]) < abs(np.diff(span(trained))[0] - np.diff(true_span)[0])


def test_match_articulation_widens_a_damped_prior_and_keeps_silence(trained, synthetic_sets):
    """A prior whose output is damped to half its identity's spread gets it back (within the
    percentile noise); silence still gives exactly the rest pose; a prior is never narrowed."""
    import copy

    clip = P.load_clip(synthetic_sets[2], split="train")
    tuned = P.finetune_prior(trained, [synthetic_sets[2]], steps=0, device="cpu", match_spread=False)
    spread = lambda p: np.diff(np.percentile(P.predict_motion(p, clip.features)[:, P.JAW_OPEN], [5, 95]))[0]  # noqa: E731
    damped = copy.deepcopy(tuned)
    with torch.no_grad():
        damped.scale.mul_(0.5)
    gains = P.match_articulation(damped, [clip])
    assert gains.min() >= 1.0 and gains.max() <= P.MAX_ARTICULATION_GAIN
    assert gains[P.JAW_OPEN] > 1.5
    assert abs(spread(damped) - spread(tuned)) < 0.25 * spread(tuned)
    silence = np.full((50, *damped.frame_shape), A.SILENCE_VALUE, np.float32)
    np.testing.assert_allclose(P.predict_motion(damped, silence), damped.rest.numpy()[None].repeat(50, 0), atol=1e-6)
    with_match = P.finetune_prior(trained, [synthetic_sets[2]], steps=0, device="cpu")
    assert len(with_match.train_info["articulation_gain"]) == len(gains)


def test_finetuning_is_reproducible_and_leaves_the_global_generator_alone(trained, synthetic_sets):
    """Dropout draws from torch's global generator, which torch seeds at random per process:
    fine-tuning seeds it from its own seed inside and restores it after, so the same call gives
    the same weights wherever the global generator stands."""
    prior = random_prior(dataclasses.replace(TINY, dropout=0.3))
    torch.manual_seed(1)
    a = P.finetune_prior(prior, [synthetic_sets[2]], steps=10, device="cpu")
    after_a = torch.random.get_rng_state()
    torch.rand(100)  # the global generator moves on
    b = P.finetune_prior(prior, [synthetic_sets[2]], steps=10, device="cpu")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    torch.manual_seed(1)
    torch.rand(0)
    assert torch.equal(after_a, torch.random.get_rng_state())  # as if fine-tuning had drawn nothing


def test_cli_predict(tmp_path, trained):
    weights = tmp_path / "w.pt"
    P.save_prior(trained, weights)
    audio, _ = speechlike(2.0, seed=5)
    sf.write(tmp_path / "speech.wav", audio, AUDIO_RATE, subtype="FLOAT")
    out = tmp_path / "motion.npy"
    assert cli_main(["prior", "predict", "--audio", str(tmp_path / "speech.wav"), "--weights", str(weights), "--output", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), P.predict_motion_from_audio(trained, audio), atol=1e-6)
    assert cli_main(["prior", "predict", "--audio", str(tmp_path / "none.wav"), "--weights", str(weights)]) == 2


# ---------------------------------------------------------------------------------------------
# The shipped weights


def fixed_input() -> np.ndarray:
    """The fixed audio on which tests/data/prior_expected.json was recorded: [48000] float32."""
    audio, _ = speechlike(3.0, seed=123)
    return audio


def test_shipped_weights_fresh_interpreter_no_network(tmp_path):
    """Fresh isolated interpreter, network disabled, cwd outside the repo: the packaged weights load
    through importlib.resources and reproduce the recorded predictions."""
    expected = json.loads(EXPECTED.read_text())
    with P.shipped_prior_path().open("rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert sha == expected["sha256"], "prior.pt changed: rerun `python bench/prior.py --expected-only`"
    np.save(tmp_path / "audio.npy", fixed_input())
    code = textwrap.dedent(
        """
        import json, socket, sys
        import numpy as np
        def _no_network(*a, **k):
            raise OSError("network disabled in this test")
        socket.socket.connect = socket.socket.connect_ex = _no_network
        socket.create_connection = socket.getaddrinfo = _no_network
        from avatar3d.audio.prior import load_prior, predict_motion_from_audio, shipped_prior_path
        prior = load_prior(None, device="cpu")
        m = predict_motion_from_audio(prior, np.load("audio.npy"))
        print(json.dumps({"where": str(shipped_prior_path()), "motion": m[::10].tolist()}))
        """
    )
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["where"].endswith("avatar3d/assets/prior.pt")
    np.testing.assert_allclose(np.array(got["motion"]), np.array(expected["motion_every_10th_frame"]), atol=1e-5)
    here = P.predict_motion_from_audio(P.load_prior(), fixed_input())[::10]
    np.testing.assert_allclose(here, np.array(expected["motion_every_10th_frame"]), atol=1e-5)


def test_shipped_prior_is_small_and_streams():
    with P.shipped_prior_path().open("rb") as f:
        assert len(f.read()) <= 20 * 2**20
    prior = P.load_prior()
    assert float(prior.voice_match) == 0.0  # weights from before voice matching load with it off
    assert not prior.contrast.any() and not prior.contrast_away.any()  # and from before syllable contrast
    audio = fixed_input()
    stream = P.PriorStream(prior)
    online = np.concatenate([stream.push(audio[i : i + 320]) for i in range(0, len(audio), 320)] + [stream.flush()])
    np.testing.assert_allclose(online, P.predict_motion_from_audio(prior, audio), atol=1e-4)


def test_shipped_prior_silence_closes_mouth():
    prior = P.load_prior()
    audio = fixed_input()
    audio = np.concatenate([audio[: AUDIO_RATE], np.zeros(2 * AUDIO_RATE, np.float32), audio[AUDIO_RATE:]])
    jaw = P.predict_motion_from_audio(prior, audio)[:, P.JAW_OPEN]
    assert jaw[25:75].max() < prior.train_info["jaw_open_p10"]
    assert np.abs(np.diff(jaw[27:75])).max() < 0.01  # still, not only closed


def test_shipped_prior_silence_in_real_driving_clip(shared_data):
    prior = P.load_prior()
    audio = A.load_audio(shared_data / "audio" / "musetalk_eng_male_60s.wav")[: 20 * AUDIO_RATE]
    cut = 10 * AUDIO_RATE
    audio = np.concatenate([audio[:cut], np.zeros(2 * AUDIO_RATE, np.float32), audio[cut:]])
    jaw = P.predict_motion_from_audio(prior, audio)[:, P.JAW_OPEN]
    assert jaw[250:300].max() < prior.train_info["jaw_open_p10"]
    assert np.percentile(jaw[:250], 90) > prior.train_info["jaw_open_p10"]  # it does open for speech

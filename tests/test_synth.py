"""The synthetic talking subject (avatar3d synth): rasterizer, determinism, ground truth, tracker.

One 3 s 512x512 clip is generated per module (~15 s on 2 cores) and checked against its own
ground truth and against mediapipe's FaceLandmarker, the tracker preprocess uses.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avatar3d.synth import raster as synth_raster
from avatar3d.cli import main as cli_main
from avatar3d.core.dataset import Label
from avatar3d.errors import UserError
from avatar3d.synth.subject import SynthPaths, load_truth, write_synth
from avatar3d.synth.mesh import build_subject, face_model_path
from avatar3d.core.video import probe, read_audio, read_frames
from avatar3d.core.vocab import FACE_OVAL, INNER_LIPS


def polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon

    m = np.zeros(shape, bool)
    rr, cc = polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape=shape)
    m[rr, cc] = True
    return m


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --- rasterizer ------------------------------------------------------------------------------

def _quad(x0, y0, x1, y1, z):
    """A camera-facing quad (two triangles) at depth z, corners in camera space."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 3, 2]])  # normal (v1-v0)x(v2-v0) points to -z (the camera)
    return v, f


def test_rasterizer_coverage_depth_and_culling():
    K = torch.tensor([[10.0, 0, 16], [0, 10.0, 16], [0, 0, 1]])
    # quad A covers pixel centres x, y in [8.5, 15.5] exactly (camera x in [-1.2, 0) at z=1.5)
    va, fa = _quad(-1.2, -1.2, -0.0001, -0.0001, 1.5)
    vb, fb = _quad(-0.4, -0.4, 0.4, 0.4, 2.0)  # quad B, further, overlapping A's corner
    verts = torch.cat([va, vb])
    faces = torch.cat([fa, fb + 4])
    frags = synth_raster.rasterize(verts, faces, K, 32, 32)
    owner = torch.full((32 * 32,), -1, dtype=torch.long)
    owner[frags.pixel] = frags.tri // 2  # 0 = quad A, 1 = quad B
    owner = owner.reshape(32, 32).numpy()
    assert (owner[8:16, 8:16] == 0).all()  # A is nearer and wins everywhere it covers
    assert (owner == 0).sum() == 64
    # B projects to x, y in [14, 18]: pixel centres 14.5..17.5 -> 4x4, minus A's 2x2 overlap
    assert (owner == 1).sum() == 16 - 4
    assert np.allclose(frags.bary.sum(1).numpy(), 1.0, atol=1e-5)
    # back faces are culled: flip A's winding, only B remains
    frags = synth_raster.rasterize(verts, torch.cat([fa[:, [0, 2, 1]], fb + 4]), K, 32, 32)
    assert len(frags.pixel) == 16


def test_rasterizer_perspective_correct_interpolation():
    """A plane tilted in depth: the interpolated attribute (camera-space x of the surface point)
    must equal the ray-plane intersection at every pixel centre, which screen-linear
    interpolation would miss by up to a pixel's worth of surface."""
    K = torch.tensor([[40.0, 0, 32], [0, 40.0, 32], [0, 0, 1]])
    verts = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 6.0], [1.0, 1.0, 6.0], [-1.0, 1.0, 2.0]])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    frags = synth_raster.rasterize(verts, faces, K, 64, 64)
    assert len(frags.pixel) > 300
    x_surf = synth_raster.interpolate(frags, faces, verts)[:, 0].double()
    px = (frags.pixel % 64).double() + 0.5
    # plane z = 4 + 2x; ray x = (px - 32) / 40 * z  ->  x = a (4 + 2x), a = (px - 32) / 40
    a = (px - 32) / 40
    x_true = 4 * a / (1 - 2 * a)
    assert torch.allclose(x_surf, x_true, atol=1e-4)
    # screen-linear interpolation (x affine in the pixel column) would be visibly wrong here
    px0, px1 = 40 * -1 / 2 + 32, 40 * 1 / 6 + 32
    x_affine = -1 + 2 * (px - px0) / (px1 - px0)
    assert (x_affine - x_true).abs().max() > 0.1


def test_sample_bilinear_matches_texel_centres():
    tex = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1)
    xy = torch.tensor([[0.5, 0.5], [1.5, 0.5], [1.0, 0.5], [3.5, 2.5], [2.0, 2.0]])
    out = synth_raster.sample_bilinear(tex, xy)[:, 0]
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.5, 11.0, 7.5]))


# --- determinism and input checks ------------------------------------------------------------

@pytest.fixture(scope="module")
def subject():
    return build_subject()


def test_subject_mesh_is_consistent(subject):
    m = subject
    v, f = len(m.verts), len(m.faces)
    assert m.faces.min() >= 0 and m.faces.max() < v
    assert m.uv.shape == (v, 2) and m.jaw_weight.shape == (v,) and m.label.shape == (f,)
    assert set(np.unique(m.label)) == {Label.TORSO, Label.HAIR, Label.FACE, Label.MOUTH}
    # lips split along the inner-lip contour: the upper lip stays, the lower lip follows the jaw
    assert (m.jaw_weight[[13, 82, 312, 0]] == 0).all() and (m.jaw_weight[[14, 87, 317, 17]] == 1).all()
    assert m.jaw_weight[[1, 4, 33, 263, 10]].max() == 0 and m.jaw_weight[152] == 1
    # a head, not a mask: the mesh extends well behind the face and above the forehead
    assert m.verts[:, 2].max() - m.verts[:478, 2].min() > 18.0
    assert m.verts[:, 1].min() < m.verts[10, 1] - 4.0  # the skull rises above the forehead
    assert m.verts[:, 1].max() > m.verts[152, 1] + 10.0  # neck and torso below the chin
    eye = np.linalg.norm(m.verts[33] - m.verts[263])
    assert abs(eye - 8.8) < 1e-3


def test_same_seed_same_bytes_other_seed_other_clip(tmp_path, subject):
    a = write_synth(tmp_path / "a", seed=3, seconds=0.6, size=128, mesh=subject)
    b = write_synth(tmp_path / "b", seed=3, seconds=0.6, size=128)  # builds its own subject
    write_synth(tmp_path / "c", seed=4, seconds=0.6, size=128, mesh=subject)
    assert a["num_frames"] == b["num_frames"] == 15
    pa, pb, pc = (SynthPaths(tmp_path / n) for n in "abc")
    assert pa.clip.read_bytes() == pb.clip.read_bytes()
    ta, tb, tc = load_truth(pa.root), load_truth(pb.root), load_truth(pc.root)
    assert set(ta) == set(tb)
    for key in ta:
        assert np.array_equal(ta[key], tb[key]), key
    assert not np.allclose(ta["R"], tc["R"])
    assert not np.array_equal(ta["audio"], tc["audio"])
    info = json.loads(pa.info.read_text())
    assert info["labels"]["FACE"] == Label.FACE and info["num_samples"] == 15 * 640


@pytest.mark.parametrize(
    "kwargs, words",
    [({"size": 127}, "size"), ({"seconds": 0.0}, "seconds"), ({"size": 32}, "size"), ({"device": "nonsense"}, "device")],
)
def test_bad_input_is_a_user_error(tmp_path, kwargs, words, subject):
    with pytest.raises(UserError, match=words):
        write_synth(tmp_path / "x", mesh=subject, **{"seconds": 0.2, "size": 128, **kwargs})
    assert not (tmp_path / "x").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli_main(["synth", "-o", str(tmp_path / "x"), "--size", "100001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size" in err[0]


# --- one real clip -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(tmp_path_factory, subject):
    root = tmp_path_factory.mktemp("synth") / "clip"
    info = write_synth(root, seed=0, seconds=3.0, size=512, mesh=subject)
    return root, info, load_truth(root), read_frames(SynthPaths(root).clip)


def test_files_and_truth_shapes(clip):
    root, info, gt, frames = clip
    n = info["num_frames"]
    assert n == 75 and frames.shape == (75, 512, 512, 3)
    media = probe(SynthPaths(root).clip)
    assert media.has_video and media.has_audio and media.fps == 25
    assert gt["R"].shape == (n, 3, 3) and gt["t"].shape == (n, 3) and gt["labels"].shape == (n, 512, 512)
    assert gt["audio"].shape == (n * 640,) and gt["mouth_open"].shape == (n,)
    assert np.allclose(gt["R"] @ gt["R"].transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(gt["R"]), 1.0, atol=1e-5)
    angles = np.degrees(np.arccos(np.clip((np.trace(gt["R"], axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angles.max() <= 15.0 * np.sqrt(3)  # each of yaw/pitch/roll within +/-15 deg
    assert angles.max() > 2.0  # and the head does move
    # the head stays in the frame
    assert (gt["landmarks_2d"] > 20).all() and (gt["landmarks_2d"] < 492).all()
    # the encoded audio is the ground-truth audio (AAC: a delay of at most a few ms)
    audio = read_audio(SynthPaths(root).clip)
    a, b = audio[: n * 640], gt["audio"]
    lags = range(0, 2048, 8)
    best = max(float(np.dot(a[lag : lag + 32000], b[:32000])) for lag in lags)
    assert best / float(np.dot(b[:32000], b[:32000])) > 0.8


def test_landmarks_project_onto_the_rendered_face(clip):
    """K, R, t and the canonical landmarks put the face exactly where the renderer drew it."""
    _, _, gt, frames = clip
    n = len(frames)
    cam = np.einsum("nij,vj->nvi", gt["R"], gt["canonical"]) + gt["t"][:, None]
    proj = np.einsum("ij,nvj->nvi", gt["K"], cam)
    xy = proj[..., :2] / proj[..., 2:]
    rigid = [1, 4, 6, 33, 133, 151, 168, 263, 362]  # nose, eyes, forehead: unmoved by the jaw
    assert np.abs(xy[:, rigid] - gt["landmarks_2d"][:, rigid]).max() < 1e-3
    labels = gt["labels"]
    for i in range(0, n, 5):
        pts = gt["landmarks_2d"][i][[1, 4, 6, 151, 168, 33, 263, 199]]  # inside the face
        lab = labels[i][pts[:, 1].astype(int), pts[:, 0].astype(int)]
        assert (lab == Label.FACE).all(), (i, lab)
        face = polygon_mask(gt["landmarks_2d"][i][list(FACE_OVAL)], labels[i].shape)
        lips = polygon_mask(gt["landmarks_2d"][i][list(INNER_LIPS)], labels[i].shape)
        assert iou(face & ~lips, labels[i] == Label.FACE) > 0.93
        mouth = labels[i] == Label.MOUTH
        assert mouth.sum() > 50 and (mouth & lips).sum() / mouth.sum() > 0.9
    # person = everything that is not background; the background plate is where labels say so
    person = labels > 0
    assert 0.2 < person.mean() < 0.8
    background = ~person[::5]
    diff = np.abs(frames[::5].astype(int) - gt["background"][None].astype(int)).max(-1)
    assert np.median(diff[background]) <= 2  # background pixels show the static plate
    assert np.median(diff[~background]) > 10


def test_mouth_opens_with_the_sound(clip):
    _, _, gt, _ = clip
    n = len(gt["mouth_open"])
    rms = np.sqrt((gt["audio"].reshape(n, 640).astype(np.float64) ** 2).mean(1))
    mouth = gt["mouth_open"]
    assert np.corrcoef(rms, mouth)[0, 1] > 0.8
    assert mouth.max() - mouth.min() > 0.8  # cm of jaw travel
    quiet = rms < 0.05 * rms.max()
    assert 0.1 < quiet.mean() < 0.6  # pauses between phrases, but mostly speech
    assert np.ptp(mouth[quiet]) < 0.3 * np.ptp(mouth)  # the mouth rests in the pauses
    assert np.abs(mouth[quiet] - mouth.min()).max() < 0.25


def test_tracker_finds_the_face_in_every_frame(clip):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    _, _, gt, frames = clip
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(face_model_path())), num_faces=1, output_face_blendshapes=True
    )
    found, err, gap, blink = [], [], [], []
    with vision.FaceLandmarker.create_from_options(options) as tracker:
        for i, frame in enumerate(frames):
            res = tracker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame))
            found.append(bool(res.face_landmarks))
            if res.face_landmarks:
                lm = np.array([[p.x * 512, p.y * 512] for p in res.face_landmarks[0]])
                err.append(np.median(np.linalg.norm(lm - gt["landmarks_2d"][i], axis=1)))
                gap.append((i, np.linalg.norm(lm[13] - lm[14])))
                scores = {c.category_name: c.score for c in res.face_blendshapes[0]}
                blink.append((i, 0.5 * (scores["eyeBlinkLeft"] + scores["eyeBlinkRight"])))
    assert np.mean(found) >= 0.99
    assert np.median(err) < 3.0  # px: the tracker agrees with the ground-truth landmarks
    idx, g = np.array(gap).T
    assert np.corrcoef(g, gt["mouth_open"][idx.astype(int)])[0, 1] > 0.8
    # the tracker sees the blinks
    idx, b = np.array(blink).T
    true_blink = gt["blink"][idx.astype(int)]
    assert (true_blink > 0.5).sum() >= 2
    assert b[true_blink > 0.5].mean() > b[true_blink == 0].mean() + 0.2

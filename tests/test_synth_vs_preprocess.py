"""The real ``avatar3d preprocess`` against the synthetic subject's exact ground truth.

One 6 s 512x512 synthetic clip is generated and preprocessed (~1.5 min on 2 busy cores). How the
comparison is made:

- Crop: preprocess crops the clip to a square ``(x0, y0, side)`` and resizes it to ``size``
  (manifest); ground-truth label maps and 2D landmarks are mapped into that crop first.
- Rotation: the pose fit has its own canonical head frame, so ``R_fit = R_true @ Q`` for one
  constant rotation ``Q``. ``Q`` is the chordal mean of ``R_true_i^T R_fit_i`` over frames
  (SVD projection onto SO(3)); the error of frame i is the angle of ``R_true_i^T R_fit_i Q^T``.
- Translation: the fit has its own head origin and metric scale, so
  ``t_fit = k (t_true + R_true c)`` for one scale ``k`` and one origin offset ``c`` (true head
  space); both are fitted by linear least squares over all frames. The error of frame i is
  ``|t_fit_i / k - t_true_i - R_true_i c|`` in centimetres, divided by the head size (truth.npz
  ``head_size``): the diagonal of the bounding box of the 478 ground-truth landmarks at rest
  (22.5 cm: 13.1 wide, 15.5 high, 9.8 deep); the bound is on the median over frames.
- Masks: per-frame IoU of FACE and of person (label != BACKGROUND) in the crop; the issue's bound
  is on the mean over frames, a second test also bounds the worst 5% of frames.
- Mouth: Pearson correlation of the tracked jawOpen blendshape with the true inner-lip gap.
"""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.core.dataset import DatasetPaths, Label, load_tracks, read_manifest
from avatar3d.synth.subject import SynthPaths, load_truth, write_synth

try:
    import avatar3d.preprocess.pipeline  # noqa: F401
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"avatar3d.preprocess.pipeline is not importable yet: {exc}", allow_module_level=True)


def crop_labels(labels: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    """Ground-truth label maps [N, H, W] -> the preprocess crop, nearest-neighbour resized."""
    x0, y0, side = crop
    out = labels[:, y0 : y0 + side, x0 : x0 + side]
    if side != size:
        idx = ((np.arange(size) + 0.5) * side / size).astype(int)
        out = out[:, idx][:, :, idx]
    return out


def rotation_errors(R_true: np.ndarray, R_fit: np.ndarray) -> np.ndarray:
    """Per-frame angle (degrees) after removing one constant head-frame rotation."""
    D = np.einsum("nji,njk->nik", R_true, R_fit)  # R_true^T R_fit  [N, 3, 3]
    U, _, Vt = np.linalg.svd(D.sum(0))
    Q = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    E = np.einsum("nij,kj->nik", D, Q)
    return np.degrees(np.arccos(np.clip((np.trace(E, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def translation_errors(R_true: np.ndarray, t_true: np.ndarray, t_fit: np.ndarray) -> np.ndarray:
    """Per-frame error (cm, true units) after fitting one scale and one head-origin offset."""
    A = np.concatenate([t_true[:, :, None], R_true], 2).reshape(-1, 4)  # unknowns: k, k c
    x, *_ = np.linalg.lstsq(A, t_fit.reshape(-1), rcond=None)
    residual = (t_fit.reshape(-1) - A @ x).reshape(-1, 3) / x[0]
    return np.linalg.norm(residual, axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from avatar3d.cli import main as cli_main

    root = tmp_path_factory.mktemp("synth_pp")
    write_synth(root / "synth", seed=0, seconds=6.0, size=512)
    assert cli_main(["preprocess", str(SynthPaths(root / "synth").clip), "-o", str(root / "data")]) == 0
    return load_truth(root / "synth"), root / "data"


def test_preprocess_recovers_the_true_rotation(pair):
    gt, data = pair
    tracks = load_tracks(data)
    n = read_manifest(data).num_frames
    assert n == len(gt["R"])
    assert tracks["valid"].mean() >= 0.99
    R_true, t_true = gt["R"].astype(np.float64), gt["t"].astype(np.float64)
    rot = rotation_errors(R_true, tracks["R"].astype(np.float64))
    assert np.median(rot) <= 2.0, rot


def test_preprocess_recovers_the_true_translation(pair):
    gt, data = pair
    tracks = load_tracks(data)
    R_true, t_true = gt["R"].astype(np.float64), gt["t"].astype(np.float64)
    head_size = float(gt["head_size"])
    assert head_size == pytest.approx(float(np.linalg.norm(np.ptp(gt["canonical"], axis=0))), rel=1e-5)
    assert 18.0 < head_size < 28.0
    trans = translation_errors(R_true, t_true, tracks["t"].astype(np.float64)) / head_size
    assert np.median(trans) <= 0.02, trans


def test_preprocess_masks_match_the_true_labels(pair):
    from avatar3d.core.masks import read_masks

    gt, data = pair
    manifest = read_manifest(data)
    masks = read_masks(DatasetPaths(data).masks)
    labels = crop_labels(gt["labels"], manifest.crop, manifest.size)
    assert masks.shape == labels.shape
    face = iou(labels == Label.FACE, masks == Label.FACE)
    person = iou(labels != Label.BACKGROUND, masks != Label.BACKGROUND)
    assert face.mean() >= 0.9, face  # the bound, on the clip's mean IoU
    assert person.mean() >= 0.9, person


def test_preprocess_masks_have_no_bad_frames(pair):
    """Stricter than the issue: no more than 5% of frames may fall below IoU 0.85 (a mask that is
    fine on average can still be badly wrong on a stretch of frames)."""
    from avatar3d.core.masks import read_masks

    gt, data = pair
    manifest = read_manifest(data)
    masks = read_masks(DatasetPaths(data).masks)
    labels = crop_labels(gt["labels"], manifest.crop, manifest.size)
    face = iou(labels == Label.FACE, masks == Label.FACE)
    person = iou(labels != Label.BACKGROUND, masks != Label.BACKGROUND)
    assert np.percentile(face, 5) >= 0.85, np.sort(face)[:10]
    assert np.percentile(person, 5) >= 0.85, np.sort(person)[:10]


def test_tracked_mouth_follows_the_true_mouth(pair):
    from avatar3d.core.vocab import blendshape_index

    gt, data = pair
    tracks = load_tracks(data)
    jaw_open = tracks["blendshapes"][:, blendshape_index("jawOpen")]
    assert np.corrcoef(jaw_open, gt["mouth_open"])[0, 1] >= 0.8
    # the tracked landmarks sit on the true ones (mapped into the crop)
    manifest = read_manifest(data)
    x0, y0, side = manifest.crop
    true_xy = (gt["landmarks_2d"] - np.array([x0, y0])) * (manifest.size / side)
    err = np.linalg.norm(tracks["landmarks"][..., :2] - true_xy, axis=-1)
    assert np.median(err) < 3.0

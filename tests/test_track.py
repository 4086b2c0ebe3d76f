"""Track stage: the mirror averaging of the FaceLandmarker's observations."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.core.vocab import BLENDSHAPE_NAMES, NUM_LANDMARKS
from avatar3d.models import face_landmarker_path
from avatar3d.preprocess.track import FaceTracker, MirrorAveragedTracker, _blendshape_mirror_index, landmark_mirror_index, unmirror


@pytest.fixture(scope="module")
def model():
    return face_landmarker_path()


@pytest.fixture(scope="module")
def photo():
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut()[:320, 80:400])  # the face, 320 x 320


def test_mirror_index_pairs_the_face_mesh(model):
    index = landmark_mirror_index(model)
    assert index.shape == (NUM_LANDMARKS,)
    np.testing.assert_array_equal(index[index], np.arange(NUM_LANDMARKS))  # an involution
    pairs = {33: 263, 133: 362, 61: 291, 234: 454, 468: 473, 469: 476}  # eye corners, mouth corners, cheeks, irises
    for a, b in pairs.items():
        assert index[a] == b and index[b] == a
    for centre in (1, 4, 10, 152, 13, 14):  # nose tip, forehead, chin, inner lips sit on the midline
        assert index[centre] == centre


def test_blendshape_mirror_swaps_left_and_right():
    index = _blendshape_mirror_index()
    name = dict(enumerate(BLENDSHAPE_NAMES))
    assert name[index[BLENDSHAPE_NAMES.index("eyeBlinkLeft")]] == "eyeBlinkRight"
    assert name[index[BLENDSHAPE_NAMES.index("mouthLeft")]] == "mouthRight"
    assert name[index[BLENDSHAPE_NAMES.index("jawOpen")]] == "jawOpen"
    np.testing.assert_array_equal(index[index], np.arange(len(BLENDSHAPE_NAMES)))


def test_unmirrored_landmarks_land_on_the_direct_ones(model, photo):
    with FaceTracker(model, video=False) as tracker:
        direct = tracker.detect(photo)
        flipped = tracker.detect(photo[:, ::-1])
    assert direct is not None and flipped is not None
    width = photo.shape[1]
    back = unmirror(flipped, width, landmark_mirror_index(model))
    err = np.linalg.norm(back.landmarks[:, :2] - direct.landmarks[:, :2], axis=-1)
    assert np.median(err) < 3.0, np.median(err)
    # without the renumbering the two disagree by far more: the test can tell a wrong map
    wrong = unmirror(flipped, width, np.arange(NUM_LANDMARKS))
    assert np.median(np.linalg.norm(wrong.landmarks[:, :2] - direct.landmarks[:, :2], axis=-1)) > 10.0
    jaw = BLENDSHAPE_NAMES.index("jawOpen")
    assert back.blendshapes[jaw] == pytest.approx(flipped.blendshapes[jaw])


def test_mirror_averaged_tracker_returns_the_mean(model, photo):
    with FaceTracker(model, video=False) as tracker:
        direct = tracker.detect(photo)
        back = unmirror(tracker.detect(photo[:, ::-1]), photo.shape[1], landmark_mirror_index(model))
    with MirrorAveragedTracker(model, video=False) as both:
        mean = both.detect(photo)
        assert both.detect(np.zeros_like(photo)) is None  # no face in either image
    np.testing.assert_allclose(mean.landmarks, (direct.landmarks + back.landmarks) / 2, atol=1e-4)
    np.testing.assert_allclose(mean.blendshapes, (direct.blendshapes + back.blendshapes) / 2, atol=1e-6)

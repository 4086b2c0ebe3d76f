"""Parse stage and masks.mkv: lossless storage, landmark contours, labels on known geometry."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.core.dataset import Label
from avatar3d.errors import UserError
from avatar3d.core.masks import MaskWriter, iter_masks, read_masks, write_masks
from avatar3d.preprocess.parse import ParseConfig, confidences, inner_lip_height_px, label_frame, run_parse
from avatar3d.core.vocab import FACE_OVAL, INNER_LIPS
from synth_dataset import FaceLayout, background_image, draw_frame, landmarks_for, layout, make_dataset


# ---------------------------------------------------------------- masks.mkv


def test_masks_lossless_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.integers(0, len(Label), size=(7, 37, 53), dtype=np.uint8)  # odd sizes, noise
    masks[:, 5:20, 10:40] = Label.FACE  # and flat regions
    path = tmp_path / "masks.mkv"
    assert write_masks(path, masks) == 7
    back = read_masks(path)
    assert back.dtype == np.uint8 and back.shape == masks.shape
    np.testing.assert_array_equal(back, masks)
    assert sum(1 for _ in iter_masks(path)) == 7
    # every byte value survives too (no range conversion anywhere)
    full = np.tile(np.arange(256, dtype=np.uint8), (2, 16, 1))
    write_masks(path, full)
    np.testing.assert_array_equal(read_masks(path), full)


def test_mask_writer_is_atomic_and_checks_input(tmp_path):
    path = tmp_path / "masks.mkv"
    with pytest.raises(RuntimeError):
        with MaskWriter(path, 16, 8) as w:
            w.write(np.zeros((8, 16), np.uint8))
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    with pytest.raises(ValueError, match="uint8"):
        with MaskWriter(path, 16, 8) as w:
            w.write(np.zeros((8, 16), np.int32))
    assert not path.exists()


def test_read_masks_rejects_non_mask_files(tmp_path):
    bad = tmp_path / "masks.mkv"
    bad.write_text("not a video")
    with pytest.raises(UserError):
        read_masks(bad)
    with pytest.raises(UserError, match="not found"):
        read_masks(tmp_path / "missing.mkv")


# ---------------------------------------------------------------- landmark contours


def _cycle_edges(cycle):
    return {frozenset((a, b)) for a, b in zip(cycle, cycle[1:] + cycle[:1])}


def test_contours_match_mediapipe_connections():
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    oval = {frozenset((c.start, c.end)) for c in C.FACE_LANDMARKS_FACE_OVAL}
    lips = {frozenset((c.start, c.end)) for c in C.FACE_LANDMARKS_LIPS}
    assert _cycle_edges(FACE_OVAL) == oval
    inner = _cycle_edges(INNER_LIPS)
    assert inner <= lips and len(inner) == 20  # the inner loop: 20 of the 40 lip edges
    assert 13 in INNER_LIPS and 14 in INNER_LIPS and 0 not in INNER_LIPS  # not the outer lip


# ---------------------------------------------------------------- labels on known geometry

SIZE = 128


def _person_conf(size: int, face) -> np.ndarray:
    """A perfect matte of the cartoon person (head with hair, neck, shoulders): ``[H, W]``."""
    frame = draw_frame(size, face, np.zeros((size, size, 3), np.uint8))
    return (frame.max(axis=2) > 0).astype(np.float32)


def test_label_frame_known_geometry():
    face = layout(SIZE, 5, 11)
    bg = background_image(SIZE)
    frame = draw_frame(SIZE, face, bg)
    conf = _person_conf(SIZE, face)
    labels = label_frame(frame, conf, landmarks_for(face), None, None, ParseConfig())
    cx, cy = face.center
    a, b = face.axes
    mx, my = face.mouth_center

    def at(x, y):
        return Label(labels[int(y), int(x)])

    assert at(mx, my) == Label.MOUTH
    assert at(cx - 0.6 * a, cy) == Label.FACE  # cheek
    assert at(cx, cy - 0.7 * b) == Label.FACE  # forehead
    assert at(cx, cy - 1.08 * b) == Label.HAIR  # hair cap above the forehead
    assert at(cx - 1.08 * a, cy - 0.2 * b) == Label.HAIR  # hair beside the temple
    assert at(cx, cy + 1.2 * b) == Label.TORSO  # neck
    assert at(cx - 1.8 * a, SIZE - 3) == Label.TORSO  # shoulder
    assert at(3, 3) == Label.BACKGROUND
    assert at(cx + 2.0 * a, cy - 0.5 * b) == Label.BACKGROUND
    # the mouth region is the inner-lip polygon: area close to the ellipse's
    ma, mb = face.mouth_axes
    assert abs((labels == Label.MOUTH).sum() - np.pi * ma * mb) < 0.25 * np.pi * ma * mb
    # face = oval polygon minus mouth: its area matches the ellipse's
    face_px = (labels == Label.FACE).sum() + (labels == Label.MOUTH).sum()
    assert abs(face_px - np.pi * a * b) < 0.05 * np.pi * a * b


def test_face_oval_is_always_person_and_closed_mouth_is_empty():
    face = layout(SIZE, 0, 2, mouth_open=0.0)
    frame = draw_frame(SIZE, face, background_image(SIZE))
    conf = np.zeros((SIZE, SIZE), np.float32)  # the segmenter saw nobody
    labels = label_frame(frame, conf, landmarks_for(face), None, None, ParseConfig())
    assert labels[int(face.center[1]), int(face.center[0])] == Label.FACE
    assert not (labels == Label.MOUTH).any()
    assert set(np.unique(labels)) == {Label.BACKGROUND, Label.FACE}


def test_forehead_skin_above_the_mesh_is_face():
    import dataclasses

    drawn = layout(SIZE, 5, 11)  # the skin ellipse that is drawn
    cx, cy = drawn.center
    a, b = drawn.axes
    # the tracked oval stops short of the hairline (as mediapipe's does): same chin, lower top
    mesh = FaceLayout((cx, cy + 0.2 * b), (a, 0.8 * b), drawn.mouth_center, drawn.mouth_axes)
    frame = draw_frame(SIZE, drawn, background_image(SIZE))
    conf = _person_conf(SIZE, drawn)
    labels = label_frame(frame, conf, landmarks_for(mesh), None, None, ParseConfig())
    assert labels[int(cy - 0.8 * b), int(cx)] == Label.FACE  # forehead skin above the mesh
    assert labels[int(cy - 0.95 * b), int(cx - 0.2 * a)] == Label.FACE
    assert labels[int(cy - 1.08 * b), int(cx)] == Label.HAIR  # the hair above stays hair
    assert labels[int(cy - 0.2 * b), int(cx - 1.08 * a)] == Label.HAIR
    off = label_frame(frame, conf, landmarks_for(mesh), None, None,
                      dataclasses.replace(ParseConfig(), skin_distance=0))
    assert off[int(cy - 0.8 * b), int(cx)] == Label.HAIR


def test_mouth_opening_threshold():
    face = layout(SIZE, 5, 11)
    ma = face.mouth_axes[0]
    for half_height, expect_mouth in ((0.3, False), (0.6, False), (1.5, True), (3.0, True)):
        thin = FaceLayout(face.center, face.axes, face.mouth_center, (ma, half_height))
        lm = landmarks_for(thin)
        # mean height of an elliptic opening: pi * a * b / (2 * a)
        assert abs(inner_lip_height_px(lm[list(INNER_LIPS), :2]) - np.pi * half_height / 2) < 0.05 * half_height
        frame = draw_frame(SIZE, thin, background_image(SIZE))
        labels = label_frame(frame, _person_conf(SIZE, thin), lm, None, None, ParseConfig())
        n_mouth = int((labels == Label.MOUTH).sum())
        assert (n_mouth > 0) == expect_mouth, (half_height, n_mouth)
        if expect_mouth:  # about the ellipse's area
            assert abs(n_mouth - np.pi * ma * half_height) < 0.35 * np.pi * ma * half_height + 4


def test_uncertain_band_decided_by_background_colour():
    bg = background_image(SIZE)
    frame = bg.copy()
    frame[:, 64:] = (255, 0, 0)  # right half: something that is not the background
    conf = np.full((SIZE, SIZE), 0.6, np.float32)  # segmenter unsure everywhere
    known = np.ones((SIZE, SIZE), bool)
    labels = label_frame(frame, conf, None, bg, known, ParseConfig())
    assert (labels[:, :60] == Label.BACKGROUND).all()  # matches the plate -> background
    assert (labels[:, 68:] == Label.TORSO).all()  # differs -> person (no face: torso)
    # where the plate was never seen, the segmenter's threshold decides
    labels = label_frame(frame, conf, None, bg, np.zeros_like(known), ParseConfig())
    assert (labels == Label.TORSO).all()
    # a confident segmenter wins over colour
    labels = label_frame(frame, np.ones_like(conf), None, bg, known, ParseConfig())
    assert (labels == Label.TORSO).all()


def test_specks_dropped_and_holes_filled():
    face = layout(SIZE, 5, 11)
    frame = draw_frame(SIZE, face, background_image(SIZE))
    conf = _person_conf(SIZE, face)
    conf[2:5, 2:5] = 1.0  # a 9-pixel speck far from the person
    hole = (int(face.center[0] - 2.0 * face.axes[0]), SIZE - 8)
    conf[hole[1] - 1 : hole[1] + 2, hole[0] - 1 : hole[0] + 2] = 0.0  # a hole in the shoulder
    labels = label_frame(frame, conf, landmarks_for(face), None, None, ParseConfig())
    assert (labels[2:5, 2:5] == Label.BACKGROUND).all()
    assert labels[hole[1], hole[0]] == Label.TORSO


# ---------------------------------------------------------------- the stage


@pytest.mark.parametrize("n,every,segmented", [(7, 3, [0, 3, 6]), (8, 3, [0, 3, 6, 7]), (4, 1, [0, 1, 2, 3]),
                                               (1, 2, [0])])
def test_confidences_segment_every_kth_frame_and_blend(n, every, segmented):
    calls = []

    def segment(frame):  # confidence = the frame's index, everywhere
        calls.append(int(frame[0, 0, 0]))
        return np.full((2, 2), float(frame[0, 0, 0]), np.float32)

    frames = (np.full((2, 2, 3), i, np.uint8) for i in range(n))
    out = list(confidences(frames, segment, every))
    assert calls == segmented
    assert [int(f[0, 0, 0]) for f, _ in out] == list(range(n))  # every frame, in order
    np.testing.assert_allclose([c[0, 0] for _, c in out], np.arange(n), atol=1e-6)  # linear blend


def test_prefetch_keeps_order_forwards_errors_and_stops():
    import threading

    from avatar3d.preprocess.prefetch import prefetch

    assert list(prefetch(iter(range(50)), 3)) == list(range(50))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise UserError("video is truncated")

    got = []
    with pytest.raises(UserError, match="truncated"):
        for x in prefetch(failing(), 2):
            got.append(x)
    assert got == [1]
    before = threading.active_count()
    endless = prefetch((i for i in iter(int, 1)), 2)  # an infinite producer
    assert next(endless) == 0
    assert threading.active_count() == before + 1  # the helper thread runs
    endless.close()  # the consumer stops early: the helper thread ends
    assert threading.active_count() == before


def test_config_rejects_inconsistent_thresholds():
    with pytest.raises(UserError, match="sure-background"):
        ParseConfig(person_threshold=0.99, sure_person=0.9)
    with pytest.raises(UserError, match="background-samples"):
        ParseConfig(background_samples=0)


def test_run_parse_writes_masks(tmp_path):
    n = 10
    paths, manifest = make_dataset(tmp_path / "data", n=n, size=SIZE, lost=(4,))
    stats = run_parse(paths, manifest, ParseConfig())
    masks = read_masks(paths.masks)
    assert masks.shape == (n, SIZE, SIZE)
    for i in range(n):
        face = layout(SIZE, i, n, mouth_open=float(i % 3 != 0))
        cx, cy = (int(v) for v in face.center)
        mx, my = (int(v) for v in face.mouth_center)
        if i == 4:  # tracking lost: no face classes at all
            assert not np.isin(masks[i], [Label.FACE, Label.MOUTH, Label.HAIR]).any()
            continue
        assert masks[i, cy - 10, cx] == Label.FACE
        assert masks[i, my, mx] == (Label.MOUTH if i % 3 != 0 else Label.FACE)
        assert masks[i, 2, 2] == Label.BACKGROUND
    assert stats["frames_without_landmarks"] == 1
    assert stats["frames_mouth_empty"] == 5  # closed in frames 0, 3, 6, 9; frame 4 lost
    fractions = stats["mean_area_fraction"]
    assert set(fractions) == {"background", "torso", "hair", "face", "mouth"}
    assert abs(sum(fractions.values()) - 1.0) < 1e-3


def test_run_parse_frame_count_mismatch_leaves_no_masks(tmp_path):
    import dataclasses

    paths, manifest = make_dataset(tmp_path / "data", n=6, size=64)
    with np.load(paths.tracks) as z:  # tracks and manifest say 8 frames, frames.mp4 holds 6
        tracks = {k: (np.concatenate([z[k], z[k][:2]]) if z[k].shape[:1] == (6,) else z[k]) for k in z.files}
    np.savez_compressed(paths.tracks, **tracks)
    with pytest.raises(UserError, match="fewer frames"):
        run_parse(paths, dataclasses.replace(manifest, num_frames=8), ParseConfig())
    assert not paths.masks.exists()
    with pytest.raises(UserError, match="tracks.npz has 8 frames"):
        run_parse(paths, manifest, ParseConfig())


# ---------------------------------------------------------------- a real clip


def test_parse_on_real_clip(shared_data, tmp_path):
    """First 40 frames of the Obama clip (256 px), tracked by the track stage, then parsed:
    labels land where the landmarks say (face at the nose, mouth at an open mouth, hair above
    the forehead, torso below the chin, background in the top corners)."""
    import cv2

    from avatar3d.core import video
    from avatar3d.core.dataset import FORMAT_VERSION, DatasetPaths, Manifest, default_split, load_tracks
    from avatar3d.fsutil import write_json
    from avatar3d.preprocess.track import TrackConfig, run_track

    n, size = 40, 256
    paths = DatasetPaths(tmp_path / "obama")
    paths.root.mkdir()
    frames = (cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
              for _, f in zip(range(n), video.iter_frames(shared_data / "obama_adnerf_crop_edtalk_20s_450.mp4")))
    assert video.write_video(paths.frames, frames, crf=14) == n
    manifest = Manifest(
        format_version=FORMAT_VERSION, source_name="obama.mp4", source_sha256="0" * 64, source_fps=25.0,
        source_duration=n / 25, fps=25, size=size, num_frames=n, crop=(0, 0, 450), split=default_split(n),
    )
    write_json(paths.manifest, manifest.to_json())
    run_track(paths, manifest, TrackConfig())
    stats = run_parse(paths, manifest, ParseConfig())
    masks = read_masks(paths.masks)
    lm = load_tracks(paths.root)["landmarks"][..., :2]  # [N, 478, 2]
    assert stats["frames_without_landmarks"] == 0

    def at(i, point):
        x, y = np.clip(point, 0, size - 1).astype(int)
        return masks[i, y, x]

    for i in range(n):
        top, chin = lm[i, 10], lm[i, 152]
        height = chin[1] - top[1]
        assert at(i, lm[i, 1]) == Label.FACE  # nose tip
        assert at(i, lm[i, 151]) == Label.FACE  # forehead
        # straight up from the top of the mesh: face (forehead), then hair, then background
        column = masks[i, : int(top[1]) + 1, int(top[0])][::-1]  # upwards
        runs = [int(v) for k, v in enumerate(column) if k == 0 or v != column[k - 1]]
        assert runs == [Label.FACE, Label.HAIR, Label.BACKGROUND], runs
        assert 0.05 * height < (column == Label.HAIR).sum() < 0.4 * height
        assert at(i, chin + (0, 0.25 * height)) == Label.TORSO  # neck
        assert at(i, (size / 2, size - 3)) == Label.TORSO  # chest
        assert masks[i, :8, :8].max() == Label.BACKGROUND and masks[i, :8, -8:].max() == Label.BACKGROUND
        if inner_lip_height_px(lm[i, list(INNER_LIPS)]) > 2.5:  # clearly open: its centre is MOUTH
            assert at(i, 0.5 * (lm[i, 13] + lm[i, 14])) == Label.MOUTH
    fractions = stats["mean_area_fraction"]
    assert 0.35 < fractions["background"] < 0.65 and 0.12 < fractions["face"] < 0.3
    assert 0.05 < fractions["hair"] < 0.2 and 0.1 < fractions["torso"] < 0.35
    assert 0 < fractions["mouth"] < 0.01

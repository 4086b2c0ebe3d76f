"""The deformable 3D Gaussian field: Gaussians, deformers, rasterizer, initialisation, losses, trainer."""

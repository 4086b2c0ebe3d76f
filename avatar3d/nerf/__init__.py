"""The hash-grid NeRF field (``avatar3d fit --field nerf``): :mod:`.march` (rays, samples,
compositing, the occupancy grid), :mod:`.field` (tri-plane hash grid with region attention over the
motion code), :mod:`.avatar` (the avatar interface), :mod:`.trainer` (the fit)."""

"""The dense rasterizer against a per-pixel reference, its gradients, and gsplat (on CUDA)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar3d.core.camera import Camera
from avatar3d.gaussian.rasterize import (
    ALPHA_MAX,
    ALPHA_MIN,
    T_MIN,
    project,
    quat_to_rotmat,
    rasterize,
    rasterize_dense,
)


def _scene(n: int, seed: int, dtype=torch.float32):
    """Random Gaussians in a 10 cm box 50 cm in front of a 32x24 camera."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([8.0, 6.0, 10.0], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.rand(n, 3, generator=g, dtype=dtype) * 1.5 - 1.5)  # 0.22 .. 1 cm
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    K = torch.tensor([[60.0, 0, 16.3], [0, 62.0, 11.8], [0, 0, 1]], dtype=dtype)
    # a slightly rotated head pose, 50 cm away
    ang = 0.2
    R = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.5, -0.3, 50.0], dtype=dtype)
    return means, quats, scales, opac, colors, K, viewmat


def _reference(means, quats, scales, opac, colors, K, viewmat, W, H):
    """Straightforward per-pixel loop over depth-sorted Gaussians (the definition: no bounding
    boxes, every pixel against every Gaussian not culled)."""
    p = project(means, quats, scales, K, viewmat, W, H, opacities=opac)
    order = torch.argsort(p.depths).tolist()
    rgb = np.zeros((H, W, 3))
    alpha = np.zeros((H, W, 1))
    m, q, o, c = p.means2d.double().numpy(), p.conics.double().numpy(), opac.double().numpy(), colors.double().numpy()
    for y in range(H):
        for x in range(W):
            T = 1.0
            for i in order:
                if p.radii[i].min() <= 0:
                    continue
                dx, dy = x + 0.5 - m[i, 0], y + 0.5 - m[i, 1]
                sigma = 0.5 * (q[i, 0] * dx * dx + q[i, 2] * dy * dy) + q[i, 1] * dx * dy
                if sigma < 0:
                    continue
                a = min(ALPHA_MAX, o[i] * math.exp(-sigma))
                if a < ALPHA_MIN:
                    continue
                if T * (1 - a) <= T_MIN:
                    break
                rgb[y, x] += c[i] * a * T
                T *= 1 - a
            alpha[y, x, 0] = 1 - T
    return rgb, alpha


def test_quat_to_rotmat_is_a_rotation():
    q = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(50, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(50), atol=1e-5, rtol=0)
    # 90 degrees about z maps x to y
    R90 = quat_to_rotmat(torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]]))[0]
    torch.testing.assert_close(R90 @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6, rtol=0)


def test_projection_of_a_sphere_matches_pinhole_geometry():
    """An isotropic Gaussian of std s at depth z projects to the pixel K x / z with std f s / z."""
    means = torch.tensor([[1.0, -2.0, 0.0]])
    K = torch.tensor([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    viewmat = torch.eye(4)
    viewmat[2, 3] = 50.0
    p = project(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.5), K, viewmat, 80, 60)
    torch.testing.assert_close(p.means2d, torch.tensor([[40 + 100 * 1 / 50, 30 - 100 * 2 / 50]]))
    var = (100 * 0.5 / 50) ** 2 + 0.3  # + eps2d blur
    # conic of the centre Gaussian: (1/var, 0, 1/var) up to the x/z, y/z terms of J (tiny here)
    torch.testing.assert_close(p.conics[0, [0, 2]], torch.full((2,), 1 / var), rtol=2e-3, atol=0)
    assert p.depths.item() == pytest.approx(50.0)
    assert p.radii[0].tolist() == [math.ceil(3.33 * math.sqrt(var))] * 2  # no opacities: gsplat's 3.33 sigma
    o = torch.tensor([0.9])  # the box of alpha >= 1/255: sqrt(2 log(255 o)) sigma
    q = project(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.5), K, viewmat, 80, 60, opacities=o)
    assert q.radii[0].tolist() == [math.ceil(math.sqrt(2 * math.log(255 * 0.9)) * math.sqrt(var))] * 2
    faint = project(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.5), K, viewmat, 80, 60,
                    opacities=torch.tensor([0.003]))
    assert faint.radii[0].tolist() == [0, 0]  # below 1/255: culled, as gsplat does


def test_dense_matches_per_pixel_reference():
    W, H = 32, 24
    scene = _scene(40, seed=1)
    rgb, alpha = rasterize(*scene, W, H, backend="dense")
    ref_rgb, ref_alpha = _reference(*scene, W, H)
    assert rgb.shape == (H, W, 3) and alpha.shape == (H, W, 1)
    assert alpha.max() > 0.5 and alpha.min() < 0.2  # the scene covers part of the image
    np.testing.assert_allclose(rgb.numpy(), ref_rgb, atol=2e-5)
    np.testing.assert_allclose(alpha.numpy(), ref_alpha, atol=2e-5)


@pytest.mark.parametrize("tile_size", [0, 8, 16, 7])
def test_tiling_does_not_change_the_image(tile_size):
    W, H = 32, 24
    scene = _scene(60, seed=2)
    ref = rasterize_dense(*scene, W, H, tile_size=0)
    out = rasterize_dense(*scene, W, H, tile_size=tile_size, max_chunk_elements=5000)
    torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.alpha, ref.alpha, atol=1e-6, rtol=0)


def test_occlusion_front_gaussian_wins_regardless_of_order():
    """Two opaque Gaussians at the same pixel: the nearer colour shows, whatever the input order."""
    K = torch.tensor([[50.0, 0, 8], [0, 50.0, 8], [0, 0, 1]])
    viewmat = torch.eye(4)
    viewmat[2, 3] = 20.0
    means = torch.tensor([[0.0, 0, 0], [0.0, 0, -5]])  # second is nearer the camera
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    scales = torch.full((2, 3), 2.0)
    opac = torch.tensor([0.99, 0.99])
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    for perm in ([0, 1], [1, 0]):
        rgb, alpha = rasterize(means[perm], quats, scales, opac, colors[perm], K, viewmat, 16, 16, backend="dense")
        c = rgb[8, 8]
        assert c[2] > 0.98 and c[0] < 0.02, c
        assert alpha[8, 8, 0] > 0.999 - 1e-6


def test_gradients_match_finite_differences():
    W, H = 12, 10
    means, quats, scales, opac, colors, K, viewmat = _scene(6, seed=3, dtype=torch.float64)
    K = K * torch.tensor([[0.4], [0.4], [1.0]], dtype=torch.float64)
    K[0, 2], K[1, 2] = 6.1, 4.9
    params = [means.requires_grad_(), quats.requires_grad_(), scales.requires_grad_(), opac.requires_grad_(),
              colors.requires_grad_()]
    weight = torch.rand(H, W, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def f(m, q, s, o, c):
        rgb, alpha = rasterize(m, q, s, o, c, K, viewmat, W, H, backend="dense")
        return (torch.cat([rgb, alpha], -1) * weight).sum()

    # thresholds (alpha < 1/255, T < 1e-4) make the function piecewise; the random scene avoids them
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_camera_crop_resize_moves_the_image():
    """Rendering a crop with the adjusted camera equals cropping and downsampling the full render."""
    scene = _scene(80, seed=5)
    means, quats, scales, opac, colors, K, viewmat = scene
    cam = Camera(K * torch.tensor([[2.0], [2.0], [1.0]]), viewmat, 64, 48)
    full, _ = rasterize(means, quats, scales, opac, colors, cam.K, cam.viewmat, 64, 48, backend="dense")
    crop = cam.crop_resize(16, 8, 32, 32)
    part, _ = rasterize(means, quats, scales, opac, colors, crop.K, crop.viewmat, 32, 32, backend="dense")
    torch.testing.assert_close(part, full[8:40, 16:48], atol=1e-5, rtol=0)
    # the camera centre in head space is -R^T t
    torch.testing.assert_close(cam.viewmat[:3, :3] @ cam.center + cam.viewmat[:3, 3], torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat comparison needs CUDA")
def test_gsplat_matches_dense_on_cuda():
    gsplat = pytest.importorskip("gsplat")  # noqa: F841
    W, H = 64, 48
    scene = [x.cuda() for x in _scene(300, seed=6)]
    scene[5] = scene[5] * torch.tensor([[2.0], [2.0], [1.0]], device="cuda")
    scene[5][0, 2], scene[5][1, 2] = 32.2, 23.9
    outs = {}
    for backend in ("dense", "gsplat"):
        leaves = [x.clone().requires_grad_() for x in scene[:5]]
        rgb, alpha = rasterize(*leaves, scene[5], scene[6], W, H, backend=backend)
        w = torch.linspace(0, 1, H * W * 4, device="cuda").reshape(H, W, 4)
        (torch.cat([rgb, alpha], -1) * w).sum().backward()
        outs[backend] = (rgb, alpha, [x.grad for x in leaves])
    d, g = outs["dense"], outs["gsplat"]
    torch.testing.assert_close(g[0], d[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(g[1], d[1], atol=1e-3, rtol=0)
    for gd, gg in zip(d[2], g[2]):
        torch.testing.assert_close(gg, gd, atol=2e-3, rtol=2e-2)


@pytest.fixture
def fresh_backend_choice():
    """resolve_backend decides once per process: start each test from an undecided state."""
    from avatar3d.gaussian import rasterize as R

    R.gsplat_unavailable_reason.cache_clear()
    R._warn_dense.cache_clear()
    yield R
    R.gsplat_unavailable_reason.cache_clear()
    R._warn_dense.cache_clear()


def test_auto_without_gsplat_tries_the_import_once_and_warns_once(fresh_backend_choice, monkeypatch, caplog):
    import builtins
    import sys

    R = fresh_backend_choice
    monkeypatch.setitem(sys.modules, "gsplat", None)  # import gsplat -> ImportError
    tries = []
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **kw: (tries.append(name) if name == "gsplat" else None) or real_import(name, *a, **kw))
    with caplog.at_level("WARNING"):
        picks = [R.resolve_backend("auto", torch.device("cuda", 0)) for _ in range(3)]
    assert picks == ["dense"] * 3 and len(tries) == 1
    warned = [r for r in caplog.records if "dense PyTorch rasterizer" in r.getMessage()]
    assert len(warned) == 1 and "not installed" in warned[0].getMessage()
    assert R.resolve_backend("auto", torch.device("cpu")) == "dense" and R.resolve_backend("gsplat", "cpu") == "gsplat"


def test_auto_with_a_gsplat_that_cannot_run_falls_back_to_dense(fresh_backend_choice, monkeypatch, caplog):
    """gsplat 1.5.3 imports fine and builds its kernels on the first call, which raises without
    nvcc or ninja: auto must see that once and use the dense path, not fail every frame."""
    import sys
    import types

    R = fresh_backend_choice
    fake = types.ModuleType("gsplat")
    fake.__version__ = R.GSPLAT_VERSION

    def rasterization(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    fake.rasterization = rasterization
    monkeypatch.setitem(sys.modules, "gsplat", fake)
    with caplog.at_level("WARNING"):
        assert [R.resolve_backend("auto", torch.device("cuda", 0)) for _ in range(2)] == ["dense", "dense"]
    warned = [r.getMessage() for r in caplog.records if "dense PyTorch rasterizer" in r.getMessage()]
    assert len(warned) == 1 and "could not rasterize" in warned[0]


def test_a_bright_wide_gaussian_reaches_every_pixel_gsplat_draws():
    """gsplat 1.5.3 bounds a Gaussian by the box where its alpha can reach 1/255
    (sqrt(2 log(255 o)) sigma per axis, up to 3.33): a bright one is drawn beyond 3 sigma. The
    dense path bins tiles by the same box, so it matches the unbounded per-pixel definition there
    (a 3-sigma box left the ring between 31 and 34 px of this one blank)."""
    W = H = 80
    K = torch.tensor([[100.0, 0, 40.0], [0, 100.0, 40.0], [0, 0, 1]])
    viewmat = torch.eye(4)
    viewmat[2, 3] = 50.0
    scene = (torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 5.0), torch.tensor([0.99]),
             torch.ones(1, 3), K, viewmat)  # std 10 px on the image
    alpha = rasterize_dense(*scene, W, H, tile_size=4).alpha
    _, ref_alpha = _reference(*scene, W, H)
    ring = ref_alpha[40, 71:74, 0]  # 31-33 px right of the centre: alpha between 1/255 and 1/100
    assert (ring > ALPHA_MIN).any() and (ring < 0.01).all()
    np.testing.assert_allclose(alpha.numpy(), ref_alpha, atol=2e-5)

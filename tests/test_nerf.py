"""The NeRF field (``--field nerf``) at tiny sizes on the CPU: rays, samples and compositing against
brute force, the occupancy grid against a known field, gradients through the hash grid, a fit
whose PSNR rises and that resumes after a kill to the same weights, and render/eval through the
avatar interface."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.core.avatar import Conditioning, load_avatar
from avatar3d.core.camera import Camera
from avatar3d.errors import UserError
from avatar3d.fit import FitConfig, run_fit
from avatar3d.core.motion import MotionStats
from avatar3d.nerf.avatar import NerfAvatar, NerfSpec
from avatar3d.nerf.config import NerfConfig
from avatar3d.nerf.march import (
    OccupancyGrid, camera_rays, composite, composite_segment, pixel_grid, ray_box, sample_along,
)
from synth_dataset import make_fit_dataset, tiny_fit_params

TINY = NerfConfig(num_levels=4, features_per_level=2, log2_table_size=10, base_resolution=8, max_resolution=64,
                  hidden=16, geo_dim=4, cond_dim=8, samples_per_ray=24, rays_per_step=256,
                  occupancy_resolution=16, occupancy_every=10, occupancy_warmup=30)
UNCERTAIN = replace(TINY, uncertainty=True)


def _avatar(config: NerfConfig = TINY, seed: int = 0, audio_dim: int = 0) -> NerfAvatar:
    stats = MotionStats(torch.zeros(52), torch.ones(52), torch.zeros(52), torch.ones(52))
    audio = {"audio_features": "mel", "audio_window": 4, "audio_dim": audio_dim} if audio_dim else {}
    avatar = NerfAvatar(NerfSpec(config, lo=(-5.0, -5.0, -5.0), hi=(5.0, 5.0, 5.0), **audio), stats)
    avatar.field.reset_parameters(torch.Generator().manual_seed(seed))
    return avatar


def test_rays_leave_their_pixels_and_meet_the_box_where_brute_force_says():
    K = torch.tensor([[60.0, 0, 31.0], [0, 55.0, 30.0], [0, 0, 1]])
    angle = 0.3
    R = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    view = torch.eye(4)
    view[:3, :3], view[:3, 3] = R, torch.tensor([0.5, -0.3, 30.0])
    pix = pixel_grid(64, 64)
    o, d = camera_rays(K, view, pix)
    assert torch.allclose(d.norm(dim=-1), torch.ones(len(d)), atol=1e-5)
    p = o + 25.0 * d  # a point on each ray, back into the camera: its pixel
    cam = p @ R.T + view[:3, 3]
    uv = torch.stack([K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2], K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]], -1)
    torch.testing.assert_close(uv, pix, atol=1e-3, rtol=0)
    lo, hi = torch.tensor([-4.0, -6.0, -3.0]), torch.tensor([5.0, 4.0, 6.0])
    near, far = ray_box(o, d, lo, hi)
    ts = torch.linspace(0, 60, 6001)
    inside = (((o[:, None] + ts[None, :, None] * d[:, None]) >= lo) & ((o[:, None] + ts[None, :, None] * d[:, None]) <= hi)).all(-1)
    expect = (ts[None] >= near[:, None] - 0.011) & (ts[None] <= far[:, None] + 0.011)
    assert inside.any() and not (inside & ~expect).any()  # nothing inside the box outside [near, far]
    hit = far > near + 0.05
    strictly = (ts[None] >= near[:, None] + 0.011) & (ts[None] <= far[:, None] - 0.011) & hit[:, None]
    assert not (strictly & ~inside).any()  # and everything between them inside


def test_samples_and_compositing_equal_brute_force():
    g = torch.Generator().manual_seed(1)
    near, far = torch.rand(50, generator=g) * 3, 3 + torch.rand(50, generator=g) * 5
    for gen in (None, g):
        t, deltas = sample_along(near, far, 16, gen)
        assert (t >= near[:, None]).all() and (t <= far[:, None]).all() and (deltas >= 0).all()
        assert (t[:, 1:] >= t[:, :-1]).all()
        torch.testing.assert_close(deltas.sum(1), far - t[:, 0])
    sigma = torch.rand(50, 16, generator=g) * 3
    rgb = torch.rand(50, 16, 3, generator=g)
    color, alpha = composite(sigma, rgb, deltas)
    for p in range(50):  # the emission-absorption sum, sample by sample
        T, c = 1.0, torch.zeros(3)
        for i in range(16):
            a = 1 - math.exp(-float(sigma[p, i] * deltas[p, i]))
            c += T * a * rgb[p, i]
            T *= 1 - a
        torch.testing.assert_close(color[p], c, atol=1e-5, rtol=1e-5)
        assert abs(float(alpha[p]) - (1 - T)) < 1e-5
    # two segments marched one after the other make the whole ray
    first, depth = composite_segment(sigma[:, :7], rgb[:, :7], deltas[:, :7], torch.zeros(50))
    second, depth = composite_segment(sigma[:, 7:], rgb[:, 7:], deltas[:, 7:], depth)
    torch.testing.assert_close(first + second, color)
    torch.testing.assert_close(1 - torch.exp(-depth), alpha)


def test_march_is_the_composite_of_the_field_and_early_stop_changes_nothing_visible():
    avatar = _avatar(UNCERTAIN)
    with torch.no_grad():  # a dense field so rays saturate and stop early
        avatar.field.density_mlp[-1].bias.data[0] = 1.5
    g = torch.Generator().manual_seed(2)
    origins = torch.tensor([0.0, 0.0, -20.0]).expand(40, 3).clone()
    dirs = torch.nn.functional.normalize(torch.randn(40, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    cond = Conditioning(torch.rand(1, 52, generator=g))
    with torch.no_grad():
        rgb, alpha, error = avatar.march(origins, dirs, cond, with_error=True)
        o, d, near, far = avatar.local_rays(origins, dirs)
        t, deltas = sample_along(near, far, TINY.samples_per_ray)
        u = (o[:, None] + t[..., None] * d[:, None] - avatar.lo) / (avatar.hi - avatar.lo)
        sigma, col, err = avatar.field(u.reshape(-1, 3), avatar.field.code(cond.motion))
        ref_rgb, ref_alpha = composite(sigma.reshape(t.shape), col.reshape(t.shape + (3,)), deltas)
        ref_error, _ = composite(sigma.reshape(t.shape), err.reshape(t.shape + (1,)), deltas)
        torch.testing.assert_close(rgb, ref_rgb, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(error, ref_error[:, 0], atol=1e-5, rtol=1e-4)  # the rays' expected error
        stop_rgb, stop_alpha, _ = avatar.march(origins, dirs, cond, early_stop=True)
        assert (stop_rgb - rgb).abs().max() < 1e-3 and (stop_alpha - alpha).abs().max() < 1e-3
        assert float(alpha.min()) > 0.99  # they did saturate


def test_occupancy_grid_never_drops_a_segment_that_carries_density():
    G = 16
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        centre = 0.2 + 0.6 * torch.rand(3, generator=g)
        radius = (0.44 + 1.6 * float(torch.rand((), generator=g))) / G  # from the guaranteed 0.43 cells to two cells

        def density(u: torch.Tensor) -> torch.Tensor:  # a ball of density 5, nothing elsewhere
            return torch.where((u - centre).norm(dim=-1) < radius, torch.full_like(u[:, 0], 5.0), torch.zeros_like(u[:, 0]))

        grid = OccupancyGrid(G)
        share = grid.update(density, 0.01)
        assert share < 0.2  # it does mark empty space empty
        pts = centre + (torch.rand(20000, 3, generator=g) * 2 - 1) * radius
        carrying = density(pts) > 0.01
        assert carrying.any() and grid.occupied(pts[carrying]).all(), (seed, radius * G)


def test_gradients_reach_the_hash_grid_the_mlps_and_the_audio_encoder():
    avatar = _avatar(UNCERTAIN, audio_dim=6)
    origins = torch.tensor([0.0, 0.0, -20.0]).expand(16, 3).clone()
    dirs = torch.nn.functional.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(3)) * 0.1
                                         + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    cond = Conditioning(torch.rand(1, 52), torch.randn(1, 4, 6))
    rgb, alpha, error = avatar.march(origins, dirs, cond, torch.Generator().manual_seed(4), with_error=True)
    (rgb.sum() + alpha.sum() + error.sum()).backward()
    grid, mlp = avatar.field.parameter_groups()
    for p in grid + mlp:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    audio = avatar.field.audio
    # (the attention over time's bias shifts every logit alike: softmax ignores it, so it gets no gradient)
    assert all(float(p.grad.abs().sum()) > 0 for p in grid + [audio.frames[0].weight, audio.time_attn.weight, audio.out.weight])
    with pytest.raises(ValueError, match="audio is required"):
        avatar.march(origins, dirs, Conditioning(torch.rand(1, 52)))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_fit_dataset(tmp_path_factory.mktemp("nerf") / "data")


def _preset(tmp_path: Path, **kw) -> str:
    path = tmp_path / "preset.json"
    params = tiny_fit_params(prior_finetune_steps=0, **{"nerf": TINY, **kw})
    path.write_text(json.dumps(params.to_json()))
    return str(path)


def test_a_tiny_fit_learns_and_draws_through_the_avatar_interface(synthetic, tmp_path):
    run = tmp_path / "run"
    metrics = run_fit(FitConfig(synthetic, run, field="nerf", preset=_preset(tmp_path, steps=150), device="cpu",
                                progress=False, threads=1))
    rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    first, last = np.mean([r["psnr_head"] for r in rows[:3]]), np.mean([r["psnr_head"] for r in rows[-3:]])
    assert last > first + 3.0, (first, last)
    assert metrics["psnr_head"] > 18.0 and metrics["occupied_cells"] > 0
    avatar = load_avatar(run, "cpu")
    assert isinstance(avatar, NerfAvatar)
    cam = Camera(torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]), torch.eye(4), 32, 32)
    cam.viewmat[2, 3] = 40.0
    rgba = avatar.render(Conditioning(torch.zeros(1, 52)), cam)
    assert rgba.shape == (32, 32, 4) and torch.isfinite(rgba).all()
    assert float(rgba[..., 3].min()) >= 0 and float(rgba[..., 3].max()) <= 1
    (run / "avatar.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt or incompatible NeRF avatar"):
        load_avatar(run, "cpu")


def test_resume_after_a_kill_gives_the_uninterrupted_fit(synthetic, tmp_path):
    """With the audio window too: a run that listens to the dataset's mel features."""
    preset = _preset(tmp_path, steps=40, checkpoint_every=15, audio_features="mel", audio_window=4,
                     nerf=replace(UNCERTAIN, occupancy_warmup=10, occupancy_every=5, uncertainty_start=0.25))
    full = run_fit(FitConfig(synthetic, tmp_path / "a", field="nerf", preset=preset, device="cpu", progress=False, threads=1))

    def kill_at_20(step: int) -> None:
        if step == 20:
            raise KeyboardInterrupt

    cfg = FitConfig(synthetic, tmp_path / "b", field="nerf", preset=preset, device="cpu", progress=False, threads=1)
    with pytest.raises(KeyboardInterrupt):
        run_fit(cfg, on_step=kill_at_20)
    seen: list[int] = []
    resumed = run_fit(replace(cfg, resume=True, preset=""), on_step=seen.append)
    assert seen == list(range(16, 41))  # after the step-15 checkpoint
    a = torch.load(tmp_path / "a" / "avatar.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "avatar.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
    assert resumed["psnr_head"] == pytest.approx(full["psnr_head"], abs=1e-3)
    avatar = load_avatar(tmp_path / "b", "cpu")
    assert avatar.audio_features == "mel" and avatar.audio_window == 4 and avatar.field.audio is not None

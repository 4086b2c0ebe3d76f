"""Gaussian sets: activations, densify/prune carrying every attribute and Adam state, .ply export."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar3d.gaussian.gaussians import (
    SH_C0,
    DensifyStrategy,
    Gaussians,
    StrategyConfig,
    duplicate,
    make_optimizer,
    remove,
    split,
)
from avatar3d.gaussian.ply import PROPERTIES, read_ply, write_ply


def _set(n: int = 5) -> Gaussians:
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(n, 3, generator=g)
    cols = torch.rand(n, 3, generator=g)
    extra = {"basis": torch.arange(n * 6, dtype=torch.float32).reshape(n, 6)}
    return Gaussians.init(pts, cols, scale=torch.linspace(0.1, 0.5, n), opacity=0.3, extra=extra)


def _step_adam(gs: Gaussians, opt: torch.optim.Optimizer) -> None:
    loss = sum((p**2).sum() for p in gs.params.values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_init_activations():
    gs = _set()
    assert len(gs) == 5
    torch.testing.assert_close(gs.opacities, torch.full((5,), 0.3))
    torch.testing.assert_close(gs.scales[:, 0], torch.linspace(0.1, 0.5, 5))
    torch.testing.assert_close(gs.scales[:, 0], gs.scales[:, 2])
    g = torch.Generator().manual_seed(0)
    torch.randn(5, 3, generator=g)
    torch.testing.assert_close(gs.colors, torch.rand(5, 3, generator=g))  # colours round-trip through SH


def test_remove_and_duplicate_carry_every_attribute_and_adam_state():
    gs = _set()
    opt = make_optimizer(gs, {"means": 0.01})
    _step_adam(gs, opt)
    before = {k: v.detach().clone() for k, v in gs.params.items()}
    moments = {g["name"]: opt.state[g["params"][0]]["exp_avg"].clone() for g in opt.param_groups}

    remove(gs, opt, torch.tensor([False, True, False, True, False]))
    keep = [0, 2, 4]
    for k, v in gs.params.items():
        torch.testing.assert_close(v.detach(), before[k][keep])
    for group in opt.param_groups:
        p = group["params"][0]
        assert p is gs.params[group["name"]]  # the optimizer updates the dict's tensors
        torch.testing.assert_close(opt.state[p]["exp_avg"], moments[group["name"]][keep])

    duplicate(gs, opt, torch.tensor([False, True, True]))
    assert len(gs) == 5
    for k, v in gs.params.items():
        torch.testing.assert_close(v.detach(), before[k][[0, 2, 4, 2, 4]])
        assert (opt.state[gs.params[k]]["exp_avg"][3:] == 0).all()  # fresh moments for copies
    _step_adam(gs, opt)  # still trains after resizing
    assert all(v.shape[0] == 5 for v in gs.params.values())


def test_split_replaces_by_two_smaller_children_near_the_parent():
    gs = _set(3)
    opt = make_optimizer(gs, {})
    parent_mean = gs.means[1].detach().clone()
    parent_log_scale = gs.params["log_scales"][1].detach().clone()
    parent_basis = gs.params["basis"][1].detach().clone()
    split(gs, opt, torch.tensor([False, True, False]), torch.Generator().manual_seed(1))
    assert len(gs) == 4
    torch.testing.assert_close(gs.params["log_scales"][2:].detach(), (parent_log_scale - math.log(1.6)).expand(2, 3))
    torch.testing.assert_close(gs.params["basis"][2:].detach(), parent_basis.expand(2, 6))
    dist = (gs.means[2:].detach() - parent_mean).norm(dim=-1)
    assert (dist > 0).all() and (dist < 4 * 0.3 * math.sqrt(3)).all()  # inside the parent (std 0.3)


def test_strategy_clones_small_splits_large_prunes_transparent():
    pts = torch.zeros(4, 3)
    gs = Gaussians.init(pts, torch.full((4, 3), 0.5), scale=torch.tensor([0.01, 1.0, 0.01, 0.01]))
    with torch.no_grad():
        gs.params["opacities"][3] = -10.0  # transparent -> pruned
    opt = make_optimizer(gs, {})
    cfg = StrategyConfig(refine_start=10, refine_every=10, grad_threshold=0.1, split_scale=0.1, reset_every=0)
    strat = DensifyStrategy(cfg, len(gs), scene_extent=1.0, device="cpu")
    means2d = torch.zeros(4, 2, requires_grad=True)
    DensifyStrategy.retain(means2d)
    (means2d * torch.tensor([[1.0, 0], [1.0, 0], [0.001, 0], [0, 0]])).sum().backward()
    strat.accumulate(means2d.grad, torch.tensor([3, 3, 3, 0]), width=2, height=2)
    torch.testing.assert_close(strat.state.grad2d, torch.tensor([1.0, 1.0, 0.001, 0.0]))
    assert strat.step(gs, opt, step=5, generator=torch.Generator()) == {"cloned": 0, "split": 0, "pruned": 0}
    done = strat.step(gs, opt, step=10, generator=torch.Generator().manual_seed(0))
    assert done == {"cloned": 1, "split": 1, "pruned": 1}
    # 4 - 1 split parent + 2 children + 1 clone - 1 pruned = 5
    assert len(gs) == 5 and strat.state.grad2d.shape == (5,)
    torch.testing.assert_close(torch.sort(gs.scales[:, 0]).values, torch.tensor([0.01, 0.01, 0.01, 0.625, 0.625]))


def test_ply_export_roundtrip(tmp_path):
    gs = _set(7)
    path = tmp_path / "avatar.ply"
    assert write_ply(path, gs) == 7
    header = path.read_bytes().split(b"end_header")[0].decode()
    assert "element vertex 7" in header
    assert [line.split()[-1] for line in header.splitlines() if line.startswith("property")] == list(PROPERTIES)
    table = read_ply(path)
    np.testing.assert_allclose(np.stack([table[k] for k in "xyz"], 1), gs.means.detach().numpy())
    np.testing.assert_allclose(table["opacity"], gs.params["opacities"].detach().numpy())
    np.testing.assert_allclose(np.exp(table["scale_1"]), gs.scales[:, 1].detach().numpy(), rtol=1e-6)
    rgb = 0.5 + SH_C0 * np.stack([table[f"f_dc_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(rgb, gs.colors.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(table["rot_0"], 1.0)
    np.testing.assert_allclose(table["nx"], 0.0)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a CPU cannot hold Gaussians on another device")
def test_split_on_cuda_with_the_fits_cpu_generator_matches_the_cpu_split():
    """A fit's generator stays on the CPU while its Gaussians sit on CUDA (drawing the noise on
    the Gaussians' device with it raises "Expected a 'cuda' device type for generator"): split
    draws where the generator lives, so CUDA and CPU give the same children."""
    out = {}
    for device in ("cpu", "cuda"):
        gs = _set(3).to(device)
        opt = make_optimizer(gs, {})
        split(gs, opt, torch.tensor([False, True, False], device=device), torch.Generator().manual_seed(1))
        out[device] = gs.means.detach().cpu()
    torch.testing.assert_close(out["cuda"], out["cpu"])

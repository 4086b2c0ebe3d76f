"""CPU tests of the hash-grid encoding: the PyTorch twin against a naive per-point reference,
gradients, random specs, and the nn.Modules. (CUDA parity lives in test_hashgrid_cuda.py.)"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar3d.cuda_ext import GridSpec, HashGrid, TriPlaneHashGrid, hash_grid_encode
from avatar3d.cuda_ext import _backend
from avatar3d.errors import UserError

PRIMES = (1, 2654435761, 805459861)


# --- naive reference: plain Python, float64, one point at a time -------------------------------


def ref_resolutions(spec: GridSpec) -> list[int]:
    L, base, top = spec.num_levels, spec.base_resolution, spec.max_resolution
    b = 1.0 if L == 1 else (top / base) ** (1.0 / (L - 1))
    return [int(math.floor(base * b**l + 1e-9)) for l in range(L)]


def ref_level_corners(point: list[float], res: int, dim: int, log2_t: int) -> list[tuple[int, float]]:
    """[(row in the level's table, weight)] for the 2**dim corners of the point's cell."""
    cell, frac = [], []
    for d in range(dim):
        pos = point[d] * res
        i = min(int(math.floor(pos)), res - 1)
        cell.append(i)
        frac.append(pos - i)
    hashed = (res + 1) ** dim > 2**log2_t
    out = []
    for k in range(2**dim):
        corner = [cell[d] + ((k >> d) & 1) for d in range(dim)]
        w = 1.0
        for d in range(dim):
            w *= frac[d] if (k >> d) & 1 else 1.0 - frac[d]
        if hashed:
            h = 0
            for d in range(dim):
                h ^= (corner[d] * PRIMES[d]) & 0xFFFFFFFF
            row = h % 2**log2_t
        else:
            row = sum(corner[d] * (res + 1) ** d for d in range(dim))
        out.append((row, w))
    return out


def ref_level_offsets(spec: GridSpec) -> list[int]:
    offsets = [0]
    for res in ref_resolutions(spec):
        offsets.append(offsets[-1] + min(2**spec.log2_table_size, (res + 1) ** spec.dim))
    return offsets


def ref_encode(x: list[list[float]], emb: list[list[float]], spec: GridSpec) -> list[list[float]]:
    offsets = ref_level_offsets(spec)
    out = []
    for point in x:
        row_out = []
        for l, res in enumerate(ref_resolutions(spec)):
            acc = [0.0] * spec.features_per_level
            for row, w in ref_level_corners(point, res, spec.dim, spec.log2_table_size):
                for f in range(spec.features_per_level):
                    acc[f] += w * emb[offsets[l] + row][f]
            row_out.extend(acc)
        out.append(row_out)
    return out


def rand(*shape, gen: torch.Generator, dtype=torch.float64, lo=0.0, hi=1.0) -> torch.Tensor:
    return torch.rand(*shape, generator=gen, dtype=dtype) * (hi - lo) + lo


def boundary_points(dim: int, finest: int, gen: torch.Generator) -> torch.Tensor:
    """0, 1, grid vertices k/finest (exact binary fractions when finest is a power of two), mixes."""
    vals = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.75, 1.0 / finest, 1.0 - 1.0 / finest, 3.0 / finest],
                        dtype=torch.float64)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * dim)  # [2**dim, dim]
    on_grid = vals[torch.randint(len(vals), (24, dim), generator=gen)]
    mixed = torch.where(torch.rand(24, dim, generator=gen) < 0.5, on_grid, rand(24, dim, gen=gen))
    return torch.cat([corners, on_grid, mixed, rand(16, dim, gen=gen)])


# Power-of-two resolutions (4, 8, 16) so k/16 is exact: the reference and the twin see the same
# boundary cases. T chosen so level 0 is dense and levels 1, 2 are hashed.
SPEC_2D = GridSpec(dim=2, num_levels=3, features_per_level=2, log2_table_size=6, base_resolution=4, max_resolution=16)
SPEC_3D = GridSpec(dim=3, num_levels=3, features_per_level=2, log2_table_size=8, base_resolution=4, max_resolution=16)


# --- GridSpec --------------------------------------------------------------------------------


def test_spec_layout_matches_instant_ngp_formula():
    spec = GridSpec(dim=3)  # L=16, F=2, T=19, 16..2048
    assert spec.resolutions == tuple(ref_resolutions(spec))
    assert spec.resolutions[0] == 16 and spec.resolutions[-1] == 2048
    assert spec.resolutions[:6] == (16, 22, 30, 42, 58, 80)
    # (58+1)^3 = 205379 <= 2^19 -> dense; (80+1)^3 = 531441 > 2^19 -> hashed
    assert spec.hashed[:6] == (False,) * 5 + (True,)
    assert spec.table_sizes[4] == 59**3 and spec.table_sizes[5] == 2**19
    assert spec.offsets[-1] == spec.total_params == sum(spec.table_sizes)
    assert list(spec.offsets) == ref_level_offsets(spec)
    assert spec.out_dim == 32
    assert SPEC_2D.resolutions == (4, 8, 16) and SPEC_2D.hashed == (False, True, True)
    assert SPEC_3D.resolutions == (4, 8, 16) and SPEC_3D.hashed == (False, True, True)


@pytest.mark.parametrize("kwargs", [dict(dim=4), dict(dim=2, num_levels=0), dict(dim=2, num_levels=33),
                                    dict(dim=2, features_per_level=3), dict(dim=2, log2_table_size=31),
                                    dict(dim=2, base_resolution=64, max_resolution=32),
                                    dict(dim=2, num_levels=1, base_resolution=4, max_resolution=8),
                                    dict(dim=2.0)])
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="GridSpec"):
        GridSpec(**kwargs)


# --- the twin against the reference ----------------------------------------------------------


def test_hand_computed_values():
    # Dense level, res 4: x = (0.25, 0.5) -> pos (1, 2) on a vertex, t = 0 -> row 1 + 2 * 5 = 11.
    spec = GridSpec(dim=2, num_levels=1, features_per_level=1, log2_table_size=8, base_resolution=4, max_resolution=4)
    emb = torch.arange(spec.total_params, dtype=torch.float64)[:, None]  # row r holds r
    x = torch.tensor([[0.25, 0.5], [1.0, 1.0], [0.0, 0.0], [0.375, 0.5], [1.0, 0.0]], dtype=torch.float64)
    out = hash_grid_encode(x, emb, spec, "torch")[:, 0]
    # (1, 1) -> cell (3, 3), t = (1, 1) -> vertex (4, 4) = 24; (0.375, 0.5): halfway 11 and 12
    assert out.tolist() == [11.0, 24.0, 0.0, 11.5, 4.0]
    # Hashed 2D: vertex (3, 5) at T = 4 -> (3 ^ 5 * 2654435761) mod 16
    spec = GridSpec(dim=2, num_levels=1, features_per_level=1, log2_table_size=4, base_resolution=8, max_resolution=8)
    emb = torch.arange(16, dtype=torch.float64)[:, None]
    out = hash_grid_encode(torch.tensor([[3 / 8, 5 / 8]], dtype=torch.float64), emb, spec, "torch")
    assert out.item() == float((3 ^ (5 * 2654435761)) % 16)


@pytest.mark.parametrize("spec", [SPEC_2D, SPEC_3D], ids=["2d", "3d"])
def test_twin_matches_reference_forward(spec):
    gen = torch.Generator().manual_seed(1)
    x = boundary_points(spec.dim, 16, gen)
    emb = rand(spec.total_params, spec.features_per_level, gen=gen, lo=-1, hi=1)
    got = hash_grid_encode(x, emb, spec, "torch")
    want = torch.tensor(ref_encode(x.tolist(), emb.tolist(), spec), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", [SPEC_2D, SPEC_3D], ids=["2d", "3d"])
def test_twin_rows_and_weights_exact(spec):
    """d out[p, l] / d embeddings is the point's (row, weight) list: compare it exactly."""
    gen = torch.Generator().manual_seed(2)
    x = boundary_points(spec.dim, 16, gen)[::3]
    one = GridSpec(dim=spec.dim, num_levels=spec.num_levels, features_per_level=1,
                   log2_table_size=spec.log2_table_size, base_resolution=spec.base_resolution,
                   max_resolution=spec.max_resolution)
    emb = torch.zeros(one.total_params, 1, dtype=torch.float64, requires_grad=True)
    out = hash_grid_encode(x, emb, one, "torch")  # [P, L]
    offsets = ref_level_offsets(one)
    for p, point in enumerate(x.tolist()):
        for l, res in enumerate(ref_resolutions(one)):
            (v_emb,) = torch.autograd.grad(out[p, l], emb, retain_graph=True)
            want = torch.zeros(one.total_params, dtype=torch.float64)
            for row, w in ref_level_corners(point, res, one.dim, one.log2_table_size):
                want[offsets[l] + row] += w
            assert torch.equal(v_emb[:, 0], want), (point, l)


def test_twin_float32_and_half_embeddings():
    gen = torch.Generator().manual_seed(3)
    spec = SPEC_3D
    x = boundary_points(3, 16, gen)
    emb64 = rand(spec.total_params, spec.features_per_level, gen=gen, lo=-1, hi=1)
    want = torch.tensor(ref_encode(x.tolist(), emb64.tolist(), spec), dtype=torch.float64)
    out32 = hash_grid_encode(x.float(), emb64.float(), spec, "torch")
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), want, rtol=0, atol=2e-6)
    emb16 = emb64.half()
    out16 = hash_grid_encode(x.float(), emb16, spec, "torch")
    assert out16.dtype == torch.float32  # fp16 tables accumulate and return in fp32
    assert torch.equal(out16, hash_grid_encode(x.float(), emb16.float(), spec, "torch"))
    emb16.requires_grad_(True)
    hash_grid_encode(x.float(), emb16, spec, "torch").sum().backward()
    assert emb16.grad.dtype == torch.float16


def test_default_size_hashes_collide_like_the_reference():
    """A default-size 2D spec (dense coarse levels, hashed fine levels) at random points."""
    gen = torch.Generator().manual_seed(4)
    spec = GridSpec(dim=2, num_levels=16, features_per_level=2, log2_table_size=12, base_resolution=16, max_resolution=2048)
    assert any(spec.hashed) and not all(spec.hashed)
    x = torch.cat([rand(20, 2, gen=gen), torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)])
    emb = rand(spec.total_params, 2, gen=gen, lo=-1, hi=1)
    want = torch.tensor(ref_encode(x.tolist(), emb.tolist(), spec), dtype=torch.float64)
    torch.testing.assert_close(hash_grid_encode(x, emb, spec, "torch"), want, rtol=1e-12, atol=1e-12)


@st.composite
def specs_and_points(draw):
    dim = draw(st.sampled_from([2, 3]))
    levels = draw(st.integers(1, 5))
    base = draw(st.integers(1, 9))
    top = base if levels == 1 else draw(st.integers(base, 70))
    spec = GridSpec(dim=dim, num_levels=levels, features_per_level=draw(st.sampled_from([1, 2, 4, 8])),
                    log2_table_size=draw(st.integers(2, 10)), base_resolution=base, max_resolution=top)
    unit = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0, allow_nan=False))
    points = draw(st.lists(st.lists(unit, min_size=dim, max_size=dim), min_size=0, max_size=12))
    return spec, points, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None)
@given(specs_and_points())
def test_twin_matches_reference_random_specs(case):
    spec, points, seed = case
    gen = torch.Generator().manual_seed(seed)
    emb = rand(spec.total_params, spec.features_per_level, gen=gen, lo=-1, hi=1)
    x = torch.tensor(points, dtype=torch.float64).reshape(len(points), spec.dim)
    got = hash_grid_encode(x, emb, spec, "torch")
    assert got.shape == (len(points), spec.out_dim)
    want = torch.tensor(ref_encode(points, emb.tolist(), spec), dtype=torch.float64).reshape(got.shape)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --- gradients -------------------------------------------------------------------------------


def off_boundary_points(spec: GridSpec, n: int, gen: torch.Generator) -> torch.Tensor:
    """Random points at least 1e-3 cells from every cell boundary on every level (for finite differences)."""
    x = rand(4 * n, spec.dim, gen=gen)
    keep = torch.ones(len(x), dtype=torch.bool)
    for res in spec.resolutions:
        frac = (x * res) - torch.floor(x * res)
        keep &= ((frac > 1e-3) & (frac < 1 - 1e-3)).all(dim=1)
    assert keep.sum() >= n
    return x[keep][:n]


@pytest.mark.parametrize("spec", [SPEC_2D, SPEC_3D], ids=["2d", "3d"])
def test_gradcheck_embeddings_and_inputs(spec):
    gen = torch.Generator().manual_seed(5)
    x = off_boundary_points(spec, 6, gen).requires_grad_(True)
    emb = rand(spec.total_params, spec.features_per_level, gen=gen, lo=-1, hi=1).requires_grad_(True)
    fn = lambda x_, e_: hash_grid_encode(x_, e_, spec, "torch", input_gradients=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, emb), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_input_gradient_matches_reference_finite_difference():
    """d out / d x from the twin against a central difference of the naive reference."""
    gen = torch.Generator().manual_seed(6)
    spec = SPEC_3D
    x = off_boundary_points(spec, 4, gen)
    emb = rand(spec.total_params, spec.features_per_level, gen=gen, lo=-1, hi=1)
    w = rand(spec.out_dim, gen=gen, lo=-1, hi=1)  # a random linear read-out
    xg = x.clone().requires_grad_(True)
    (hash_grid_encode(xg, emb, spec, "torch", input_gradients=True) @ w).sum().backward()
    h = 1e-7
    for p in range(len(x)):
        for d in range(3):
            plus, minus = x[p].tolist(), x[p].tolist()
            plus[d] += h
            minus[d] -= h
            f = lambda pt: sum(a * b for a, b in zip(ref_encode([pt], emb.tolist(), spec)[0], w.tolist()))  # noqa: E731
            fd = (f(plus) - f(minus)) / (2 * h)
            assert abs(xg.grad[p, d].item() - fd) <= 1e-5 * max(1.0, abs(fd))


def test_input_gradients_flag():
    gen = torch.Generator().manual_seed(7)
    spec = SPEC_2D
    x = rand(8, 2, gen=gen).requires_grad_(True)
    emb = rand(spec.total_params, 2, gen=gen).requires_grad_(True)
    out = hash_grid_encode(x, emb, spec, "torch")  # input_gradients=False: x is a constant
    (v_x, v_emb) = torch.autograd.grad(out.sum(), (x, emb), allow_unused=True)
    assert v_x is None and v_emb is not None and v_emb.abs().sum() > 0
    out = hash_grid_encode(x, emb, spec, "torch", input_gradients=True)
    (v_x,) = torch.autograd.grad(out.sum(), (x,))
    assert v_x.abs().sum() > 0


# --- checks and implementation choice --------------------------------------------------------


def test_public_function_rejects_bad_inputs():
    spec = SPEC_2D
    emb = torch.zeros(spec.total_params, 2)
    ok = torch.rand(4, 2)
    with pytest.raises(ValueError, match=r"x must be \[N, 2\]"):
        hash_grid_encode(torch.rand(4, 3), emb, spec)
    with pytest.raises(ValueError, match="embeddings must be"):
        hash_grid_encode(ok, torch.zeros(spec.total_params + 1, 2), spec)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hash_grid_encode(torch.tensor([[0.5, 1.0001]]), emb, spec)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hash_grid_encode(torch.tensor([[0.5, float("nan")]]), emb, spec)
    with pytest.raises(ValueError, match="float32 or float64"):
        hash_grid_encode(ok.half(), emb, spec)
    with pytest.raises(ValueError, match="implementation"):
        hash_grid_encode(ok, emb, spec, "triton")
    with pytest.raises(ValueError, match="CUDA device"):
        hash_grid_encode(ok, emb, spec, "cuda")
    with pytest.raises(TypeError, match="GridSpec"):
        hash_grid_encode(ok, emb, dict(dim=2))
    assert hash_grid_encode(torch.zeros(0, 2), emb, spec).shape == (0, spec.out_dim)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_unavailable_says_why():
    reason = _backend.cuda_unavailable_reason()
    assert reason and ("no CUDA support" in reason or "is_available" in reason)
    with pytest.raises(UserError, match="CUDA hash-grid encoding is unavailable"):
        _backend.cuda_ops()


def test_import_never_compiles():
    code = ("import avatar3d.cuda_ext as c, avatar3d.cuda_ext._backend as b; "
            "assert b._build.cache_info().currsize == 0; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_build_definition(monkeypatch):
    build = _backend.BUILD
    assert all((_backend.CSRC / s).is_file() for s in build.sources)
    monkeypatch.delenv(_backend.FAST_MATH_ENV, raising=False)
    kw = build.load_kwargs()
    assert kw["name"] == "avatar3d_hashgrid" and not kw["is_python_module"]
    assert "-O3" in kw["extra_cuda_cflags"] and "--use_fast_math" not in kw["extra_cuda_cflags"]
    monkeypatch.setenv(_backend.FAST_MATH_ENV, "1")
    assert "--use_fast_math" in build.setup_kwargs()["extra_compile_args"]["nvcc"]
    # the binding registers the namespace the loader looks up
    assert f"TORCH_LIBRARY({build.name}," in (_backend.CSRC / "hashgrid_binding.cpp").read_text()


# --- modules ---------------------------------------------------------------------------------


def test_hashgrid_module_shapes_and_init():
    grid = HashGrid(3, num_levels=4, features_per_level=4, log2_table_size=10, base_resolution=4, max_resolution=64)
    assert grid.out_dim == 16
    assert grid.embeddings.shape == (grid.spec.total_params, 4) and grid.embeddings.dtype == torch.float32
    e = grid.embeddings.detach()
    assert e.abs().max() <= 1e-4 and e.max() > 0.9e-4 and e.min() < -0.9e-4
    assert abs(e.mean().item()) < 1e-5  # centred
    x = torch.rand(50, 3)
    out = grid(x)
    assert out.shape == (50, 16) and out.dtype == torch.float32
    assert torch.equal(out, hash_grid_encode(x, grid.embeddings, grid.spec, "torch"))
    half = HashGrid(2, num_levels=2, log2_table_size=8, base_resolution=4, max_resolution=8, dtype=torch.float16)
    assert half.embeddings.dtype == torch.float16 and half.embeddings.abs().max() <= 1e-4
    assert half(torch.rand(5, 2)).dtype == torch.float32


def test_module_input_gradients_follow_requires_grad():
    grid = HashGrid(2, num_levels=3, log2_table_size=8, base_resolution=4, max_resolution=16)
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    x = torch.rand(10, 2, requires_grad=True)
    grid(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and grid.embeddings.grad.abs().sum() > 0


def test_triplane_module():
    tri = TriPlaneHashGrid(num_levels=3, features_per_level=2, log2_table_size=8, base_resolution=4, max_resolution=32)
    assert tri.out_dim == 18 and len(tri.planes) == 3
    for p in tri.planes:
        assert p.spec.dim == 2 and p.embeddings.abs().max() <= 1e-4
    with torch.no_grad():
        for p in tri.planes:
            p.embeddings.uniform_(-1, 1)
    x = torch.rand(40, 3)
    out = tri(x)
    assert out.shape == (40, 18) and out.dtype == torch.float32
    xy, yz, xz = (hash_grid_encode(x[:, list(a)], p.embeddings, p.spec, "torch")
                  for p, a in zip(tri.planes, ((0, 1), (1, 2), (0, 2))))
    assert torch.equal(out, torch.cat([xy, yz, xz], dim=1))
    # each plane ignores the third axis: moving z changes only the yz and xz blocks
    x2 = x.clone()
    x2[:, 2] = torch.rand(40)
    out2 = tri(x2)
    assert torch.equal(out2[:, :6], out[:, :6]) and not torch.equal(out2[:, 6:], out[:, 6:])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        tri(torch.rand(4, 2))


def test_the_jit_build_finds_the_ninja_pip_installed(monkeypatch):
    """torch's JIT build runs `ninja` from PATH, and `make` (or an IDE) does not put the
    environment's bin folder there: the loader adds the pip-installed ninja's folder itself."""
    import os
    import shutil

    from torch.utils import cpp_extension

    ninja = pytest.importorskip("ninja", reason="the ninja package (a requirement) is not installed")
    bare = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (shutil.which("ninja", path=p)))
    monkeypatch.setenv("PATH", bare)
    assert not cpp_extension.is_ninja_available()  # as under `make test` without a system ninja
    assert _backend.ensure_ninja_on_path()
    assert cpp_extension.is_ninja_available() and os.environ["PATH"].startswith(ninja.BIN_DIR)

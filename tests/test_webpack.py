"""`avatar3d export-web`: the bake of the face field into linear terms, the file that carries it,
and the file read back into an avatar that draws as the bake does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.cli import main
from avatar3d.errors import UserError
from avatar3d.gaussian.bake import BakeConfig, BakedFaceDeformer, bake_codes, fit_linear, fit_residual, prune
from avatar3d.gaussian.deform import Deformation
from synth_dataset import make_tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("webpack"))


class _LinearField(torch.nn.Module):
    """A face field that is affine in the clamped code: the bake must recover it exactly."""

    def __init__(self, n: int):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn(53, n, 10, generator=g) * 0.1
        self.w[:, :5] = 0  # five Gaussians that never move
        self.register_buffer("motion_lo", torch.full((52,), 0.1))
        self.register_buffer("motion_hi", torch.full((52,), 0.8))

    def forward(self, means, motion, audio):
        x = torch.cat([motion.clamp(0.1, 0.8), torch.ones(motion.shape[0], 1)], 1)
        out = torch.einsum("bk,knd->bnd", x, self.w)
        return Deformation(out[..., :3], out[..., 3:7], out[..., 7:10])


def test_bake_recovers_a_linear_field_and_prunes_what_does_not_move():
    field = _LinearField(40)
    gen = torch.Generator().manual_seed(0)
    lo, hi = field.motion_lo, field.motion_hi
    codes = bake_codes(torch.rand(30, 52, generator=gen), lo, hi, 300, gen)
    assert codes.shape == (300, 52) and (codes >= lo).all() and (codes <= hi).all()
    w = fit_linear(field, torch.zeros(40, 3), codes)
    torch.testing.assert_close(w, field.w, atol=2e-3, rtol=1e-2)  # up to the ridge
    pruned, kept = prune(w, lo, hi, BakeConfig())
    assert (pruned[:52, :5] == 0).all() and 0.8 < kept["means"] < 0.9  # the 5 still ones of 40 are dropped
    assert torch.equal(pruned[52], w[52])  # the bias stays
    code = torch.rand(2, 52, generator=gen)
    ref = field(None, code, None)
    exact = BakedFaceDeformer(w, lo, hi)(torch.zeros(40, 3), code, None)
    torch.testing.assert_close(exact.d_means, ref.d_means, atol=2e-3, rtol=1e-2)
    # pruned: off by at most the dropped terms' effects over the clamp range
    d = BakedFaceDeformer(pruned, lo, hi)(torch.zeros(40, 3), code, None)
    assert float((d.d_means - ref.d_means).abs().max()) <= 52 * BakeConfig().prune_means_cm


class _BentField(_LinearField):
    """An affine field plus a shared direction weighted by the product of two channels, which no
    affine function of the code holds."""

    def __init__(self, n: int):
        super().__init__(n)
        self.direction = torch.randn(n, 10, generator=torch.Generator().manual_seed(2)) * 0.1

    def forward(self, means, motion, audio):
        d = super().forward(means, motion, audio)
        x = motion.clamp(0.1, 0.8)
        bend = (x[:, 0] * x[:, 1])[:, None, None] * self.direction  # [B, n, 10]
        return Deformation(d.d_means + bend[..., :3], d.d_quats + bend[..., 3:7], d.d_log_scales + bend[..., 7:])


def test_the_residual_takes_what_the_affine_terms_miss():
    field = _BentField(40)
    gen = torch.Generator().manual_seed(0)
    lo, hi = field.motion_lo, field.motion_hi
    train = torch.rand(30, 52, generator=gen)
    codes = bake_codes(train, lo, hi, BakeConfig().samples, gen)
    w = fit_linear(field, torch.zeros(40, 3), codes)
    config = BakeConfig(residual_rank=2)
    net, basis, error = fit_residual(field, torch.zeros(40, 3), codes, w, config, gen)
    assert basis.shape == (2, 40, 10) and error < 0.01
    held = bake_codes(train, lo, hi, 50, torch.Generator().manual_seed(5))  # codes like those of the clip
    ref = field(None, held, None).d_means
    affine = BakedFaceDeformer(w, lo, hi)(torch.zeros(40, 3), held, None).d_means
    with torch.no_grad():
        bent = BakedFaceDeformer(w, lo, hi, net, basis)(torch.zeros(40, 3), held, None).d_means
    miss_affine, miss_bent = float((affine - ref).abs().mean()), float((bent - ref).abs().mean())
    assert miss_bent < 0.25 * miss_affine, (miss_bent, miss_affine)


def test_export_web_writes_a_file_that_draws_as_the_bake(run_dir, tmp_path, capsys):
    from avatar3d.core.avatar import load_avatar
    from avatar3d.core.runs import open_run
    from avatar3d.core.scene import load_run_scene
    from avatar3d.drive.metrics import psnr
    from avatar3d.gaussian.bake import bake_avatar
    from avatar3d.gaussian.webpack import avatar_from_pack, read_pack

    out = tmp_path / "avatar.a3dw"
    rc = main(["export-web", str(run_dir), "-o", str(out), "--device", "cpu", "--frames", "4"])
    assert rc == 0, capsys.readouterr().err
    pack = read_pack(out)
    h = pack.header
    assert h["format"] == "avatar3d-web" and h["version"] == 2 and h["residual"]["rank"] == BakeConfig().residual_rank and len(h["frames"]["index"]) == 4
    assert len(pack.arrays["frames.jpeg_offsets"]) == 5 and pack.arrays["frames.jpeg"][:2].tobytes() == b"\xff\xd8"

    avatar = load_avatar(run_dir, "cpu")
    scene = load_run_scene(open_run(run_dir), "")
    baked, _ = bake_avatar(avatar, scene.motion[np.asarray(scene.train)])
    from_file = avatar_from_pack(pack)
    with torch.no_grad():
        for i in scene.val[:3]:
            cond, cam = scene.conditioning(int(i), 0, "cpu"), scene.camera(int(i), "cpu")
            full, mem, file = avatar.render(cond, cam), baked.render(cond, cam), from_file.render(cond, cam)
            assert float(psnr(file, mem)) > 45  # the file's float16 costs nothing visible
            assert float(psnr(mem, full)) > 30  # the bake follows the field


def test_bad_files_and_runs_are_one_line_errors(run_dir, tmp_path, capsys):
    from avatar3d.gaussian.webpack import read_pack

    junk = tmp_path / "junk.a3dw"
    junk.write_bytes(b"not a pack at all")
    with pytest.raises(UserError, match="not an avatar3d web file"):
        read_pack(junk)
    out = tmp_path / "a.a3dw"
    assert main(["export-web", str(run_dir), "-o", str(out), "--device", "cpu", "--frames", "2"]) == 0
    data = out.read_bytes()
    cut = tmp_path / "cut.a3dw"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut short"):
        read_pack(cut)
    capsys.readouterr()
    for args, message in (
        (["-o", str(tmp_path / "x.bin")], "must be a .a3dw file"),
        (["-o", str(tmp_path / "nope" / "x.a3dw")], "output folder does not exist"),
        (["-o", str(tmp_path / "x.a3dw"), "--frames", "0"], "--frames must be >= 1"),
    ):
        assert main(["export-web", str(run_dir), *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["export-web", str(tmp_path / "norun"), "-o", str(tmp_path / "y.a3dw")]) == 2
    assert not (tmp_path / "x.a3dw").exists() and not (tmp_path / "y.a3dw").exists()

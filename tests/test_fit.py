"""Fit on a synthetic dataset rendered from known Gaussians: it learns, resumes exactly, and the
run folder reads back (config, avatar, .ply, metrics, val PNG)."""
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
from avatar3d.core.vocab import BLENDSHAPE_NAMES, blendshape_index
from avatar3d.drive.metrics import psnr
from avatar3d.drive.val import val_metrics
from avatar3d.errors import UserError
from avatar3d.fit import FitConfig, run_fit
from avatar3d.gaussian.avatar import GaussianAvatar
from avatar3d.gaussian.config import PRESETS, FitParams, params_from_json, resolve_preset
from avatar3d.gaussian.data import closed_mouth_canonical, load_fit_data
from avatar3d.gaussian.gaussians import StrategyConfig
from avatar3d.gaussian.init import init_avatar
from avatar3d.gaussian.losses import Target, branch_loss, landmark_guidance, lip_box, shut_cover_loss, turned
from avatar3d.gaussian.ply import read_ply
from avatar3d.gaussian.trainer import swap_other_channels
from synth_dataset import FIT_FRAMES as FRAMES
from synth_dataset import FIT_SIZE as SIZE
from synth_dataset import make_fit_dataset, tiny_fit_params



@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_fit_dataset(tmp_path_factory.mktemp("synthetic") / "data")


def _preset_file(tmp_path: Path, params: FitParams) -> str:
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(params.to_json()))
    return str(path)


def test_fit_learns_the_synthetic_head(synthetic, tmp_path):
    params = tiny_fit_params()
    data = load_fit_data(synthetic, params)
    assert data.frames.count == FRAMES and data.frame(0).image.shape == (48, 48, 3) and data.window.side <= SIZE
    assert data.frames.form == "raw" and data.drawable(0) == len(data.train)
    start, _ = val_metrics(init_avatar(data, params, torch.Generator().manual_seed(0)), data, data.frame, "cpu",
                           landmarks=False)
    run = tmp_path / "run"
    metrics = run_fit(FitConfig(synthetic, run, preset=_preset_file(tmp_path, params), device="cpu", progress=False, threads=1))
    assert metrics["psnr_head"] > start["psnr_head"] + 6.0, (start, metrics)
    assert metrics["psnr_head"] > 24.0 and metrics["ssim_head"] > 0.8
    assert metrics["psnr"] >= metrics["psnr_head"]  # outside the head the frame's own pixels show

    # the run folder reads back
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["psnr_head"] == pytest.approx(metrics["psnr_head"]) and saved["resolution"] == [48, 48]
    config = json.loads((run / "config.json").read_text())
    assert params_from_json(config["params"]) == params
    assert not (run / "checkpoint.pt").exists() and not (tmp_path / ".run.partial").exists()
    avatar = load_avatar(run)
    assert isinstance(avatar, GaussianAvatar) and not avatar.training
    nf, nm = avatar.num_gaussians()
    assert (nf, nm) == (saved["num_face"], saved["num_mouth"]) and nf > 0 and nm == 60
    ply = read_ply(run / "avatar.ply")
    assert len(ply["x"]) == nf + nm
    np.testing.assert_allclose(ply["x"][:nf], avatar.face.means[:, 0].detach().numpy())
    import cv2

    png = cv2.imread(str(run / "val.png"))
    assert png.shape[1] == 3 * png.shape[0] // len(saved["val_png_frames"])  # rows of 3 square panels

    # the mouth moves with jawOpen: renders with the jaw closed and open differ around the mouth
    i = int(data.val[0])
    cam = data.camera(i, "cpu")
    closed = torch.zeros(1, len(BLENDSHAPE_NAMES))
    opened = closed.clone()
    opened[0, blendshape_index("jawOpen")] = 1.0
    with torch.no_grad():
        a = avatar.render(Conditioning(closed), cam)
        b = avatar.render(Conditioning(opened), cam)
    assert a.shape == (48, 48, 4)
    assert (a - b).abs().max() > 0.2


def _mouth_target(S: int, rows: slice) -> Target:
    """An all-head S x S target whose mouth mask is ``rows`` x the middle half of the columns."""
    mouth = torch.zeros(S, S)
    mouth[rows, S // 4 : 3 * S // 4] = 1.0
    return Target(image=torch.zeros(S, S, 3), background=torch.zeros(S, S, 3), head=torch.ones(S, S),
                  mouth=mouth, region=torch.ones(S, S))


def test_branch_loss_wants_teeth_from_the_mouth_branch_and_skin_from_the_face_branch():
    S = 24
    target = _mouth_target(S, slice(8, 16))
    mouth = target.mouth
    decomposed = branch_loss((1 - mouth)[..., None], mouth[..., None], target)
    assert float(decomposed) == 0.0
    face_everywhere = branch_loss(torch.ones(S, S, 1), torch.zeros(S, S, 1), target)
    mouth_everywhere = branch_loss(torch.zeros(S, S, 1), torch.ones(S, S, 1), target)
    assert float(face_everywhere) == pytest.approx(1.0) and float(mouth_everywhere) == pytest.approx(1.0)


def test_branch_loss_leaves_the_lips_inner_rim_to_either_branch():
    # at 512² the band is 2 px on each side of the mask's edge
    target = _mouth_target(512, slice(200, 248))
    rim = torch.zeros(512, 512)
    rim[198:202, 128:384] = 1.0
    assert float(branch_loss(rim[..., None], rim[..., None], target)) == 0.0
    rim[197, 256] = 1.0  # 3 px outside the mask: the mouth branch may not draw there
    rim[202, 256] = 1.0  # 3 px inside: the face branch may not draw there
    assert float(branch_loss(rim[..., None], rim[..., None], target)) > 0.0


def test_branch_loss_still_splits_a_thin_mouth_at_low_resolution():
    """The band scales with the window: a 3 px tall mouth at 128² (12 px at 512²) must not be left
    entirely to the face branch, as a fixed 2 px band did (nothing was deep inside the mask)."""
    for S, rows in ((128, slice(60, 63)), (512, slice(240, 252))):
        target = _mouth_target(S, rows)
        face_over_the_mouth = branch_loss(torch.ones(S, S, 1), torch.zeros(S, S, 1), target)
        assert float(face_over_the_mouth) > 0.5, S


def test_swap_other_channels_keeps_the_prior_driven_ones():
    from avatar3d.core.vocab import SPEECH_CHANNELS

    cond = Conditioning(torch.zeros(1, len(BLENDSHAPE_NAMES)), torch.ones(1, 4, 3))
    swapped = swap_other_channels(cond, torch.ones(len(BLENDSHAPE_NAMES)))
    driven = [blendshape_index(n) for n in SPEECH_CHANNELS]
    others = [k for k in range(len(BLENDSHAPE_NAMES)) if k not in driven]
    assert float(swapped.motion[0, driven].abs().max()) == 0.0  # the mouth code stays this frame's
    assert float(swapped.motion[0, others].min()) == 1.0 and len(others) == len(BLENDSHAPE_NAMES) - len(SPEECH_CHANNELS)
    assert swapped.audio is cond.audio


def test_landmark_guidance_teaches_the_field_where_the_lips_go(synthetic):
    """Optimising the guidance alone moves the field's lip landmarks onto the tracked ones: the
    lower lip drops with jawOpen, by about as much as the tracker saw."""
    params = tiny_fit_params()
    data = load_fit_data(synthetic, params)
    torch.manual_seed(0)
    avatar = init_avatar(data, params, torch.Generator().manual_seed(0))
    with torch.no_grad():  # the guidance alone: on this short clip the code's 0.5-99.5 % range
        avatar.face_deform.motion_lo.fill_(-math.inf)  # clamps the widest frames, which this
        avatar.face_deform.motion_hi.fill_(math.inf)  # test compares (see test_deform)
    inner_upper, inner_lower = 13, 14  # inner-lip midpoints (MOUTH_LANDMARKS)

    def guidance(i: int) -> torch.Tensor:
        return landmark_guidance(avatar, data, i, data.conditioning(i, params.audio_window, "cpu"), "cpu")

    def moved_gap(i: int) -> float:
        with torch.no_grad():
            cond = data.conditioning(i, params.audio_window, "cpu")
            d = avatar.face_deform(data.canonical, cond.motion, cond.audio)
            pc = (data.canonical + d.d_means[0]) @ data.R[i].T + data.t[i]
            uv = pc @ data.K.T
            uv = uv[:, :2] / uv[:, 2:]
        return float((uv[inner_lower] - uv[inner_upper]).norm())

    train = [int(i) for i in data.train]
    jaw = data.motion[train, blendshape_index("jawOpen")]
    shut, wide = train[int(jaw.argmin())], train[int(jaw.argmax())]
    tracked_gap = {i: float(np.linalg.norm(data.landmarks[i][inner_lower] - data.landmarks[i][inner_upper])) for i in (shut, wide)}
    assert tracked_gap[wide] - tracked_gap[shut] > 3.0  # the synthetic jaw opens by several pixels
    before = float(torch.stack([guidance(i).detach() for i in train]).mean())
    assert abs(moved_gap(wide) - moved_gap(shut)) < 0.5  # untrained field: no deformation yet
    opt = torch.optim.Adam(avatar.face_deform.parameters(), lr=1e-2)
    # the learning rate decays to 0, so the field settles: at a constant 1e-2 the guidance swings
    # between 0.24x and 0.60x of its start from one hundred steps to the next, and where step 300
    # falls in that swing depends on the CPU's float kernels
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    for step in range(300):
        opt.zero_grad()
        guidance(train[step % len(train)]).backward()
        opt.step()
        sched.step()
    after = float(torch.stack([guidance(i).detach() for i in train]).mean())
    assert after < 0.4 * before, (before, after)
    opened = moved_gap(wide) - moved_gap(shut)
    assert opened == pytest.approx(tracked_gap[wide] - tracked_gap[shut], rel=0.35), (opened, tracked_gap)


def test_fit_with_audio_features_learns(synthetic, tmp_path):
    params = tiny_fit_params(steps=120, audio_features="mel", audio_window=4)
    metrics = run_fit(FitConfig(synthetic, tmp_path / "run", preset=_preset_file(tmp_path, params), device="cpu",
                                progress=False))
    assert metrics["psnr_head"] > 20.0
    avatar = load_avatar(tmp_path / "run")
    assert avatar.spec.audio_features == "mel" and avatar.spec.audio_window == 4
    with pytest.raises(ValueError, match="audio"):
        avatar.render(Conditioning(torch.zeros(1, 52)), Camera(torch.eye(3), torch.eye(4), 8, 8))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: densify and resume with the fit's CPU generator on a GPU"))])
def test_resume_after_a_kill_continues_from_the_checkpoint(synthetic, tmp_path, device):
    params = tiny_fit_params(steps=12, checkpoint_every=5,
                     strategy=StrategyConfig(refine_start=4, refine_every=4, reset_every=0, grad_threshold=1e-4,
                                             split_scale=0.02, max_gaussians=1500))
    preset = _preset_file(tmp_path, params)
    full = run_fit(FitConfig(synthetic, tmp_path / "a", preset=preset, device=device, progress=False, threads=1))

    def kill_at_7(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt

    cfg = FitConfig(synthetic, tmp_path / "b", preset=preset, device=device, progress=False, threads=1)
    with pytest.raises(KeyboardInterrupt):
        run_fit(cfg, on_step=kill_at_7)
    assert (tmp_path / ".b.partial" / "checkpoint.pt").is_file() and not (tmp_path / "b").exists()
    seen: list[int] = []
    with pytest.raises(UserError, match="--resume continues .* steps .*differ"):  # other params: refused
        run_fit(replace(cfg, resume=True, preset="tiny"))
    resumed = run_fit(replace(cfg, resume=True, preset=""), on_step=seen.append)  # the saved params
    assert seen == list(range(6, 13))  # continued after the step-5 checkpoint
    a = torch.load(tmp_path / "a" / "avatar.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "avatar.pt", weights_only=True)
    assert a.keys() == b.keys()
    if device == "cpu":
        for k in a:  # the same trajectory as the uninterrupted fit (densification included)
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
        assert resumed["psnr_head"] == pytest.approx(full["psnr_head"], abs=1e-3)
    else:  # CUDA's atomics reorder sums: the same fit up to that, densification included
        assert resumed["num_face"] == pytest.approx(full["num_face"], rel=0.02)
        assert resumed["psnr_head"] == pytest.approx(full["psnr_head"], abs=0.5)
    with pytest.raises(UserError, match="nothing to resume"):
        run_fit(replace(cfg, resume=True))


def test_presets_resolve_from_names_json_files_and_runs(tmp_path):
    for name, params in PRESETS.items():
        assert resolve_preset(name) == params
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(params.to_json()))
        assert resolve_preset(str(path)) == params
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"steps": 77, "strategy": {"max_gaussians": 9}}))
    got = resolve_preset(str(partial))  # fields left out keep the default preset's values
    assert got == replace(PRESETS["default"], steps=77, strategy=replace(PRESETS["default"].strategy, max_gaussians=9))
    run_config = tmp_path / "config.json"
    run_config.write_text(json.dumps({"fit": {"data": "d"}, "params": PRESETS["tiny"].to_json()}))
    assert resolve_preset(str(run_config)) == PRESETS["tiny"]
    assert PRESETS["tiny"].image_size == 128 and PRESETS["tiny"].window == "head"
    assert PRESETS["small"].image_size == 256 and PRESETS["small"].window == "head"
    with pytest.raises(UserError, match="unknown FitParams keys"):
        params_from_json({"stepz": 3})
    with pytest.raises(UserError, match="expected int"):
        params_from_json({"steps": "many"})
    with pytest.raises(UserError, match="unknown preset"):
        resolve_preset("huge")


def test_bad_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="dataset not found"):
        run_fit(FitConfig(tmp_path / "nope", tmp_path / "run", preset="tiny", device="cpu", progress=False, threads=1))


def test_an_avatar_from_another_version_is_a_user_error(synthetic, tmp_path):
    params = tiny_fit_params()
    avatar = init_avatar(load_fit_data(synthetic, params), params, torch.Generator().manual_seed(0))
    avatar.save(tmp_path)
    state = torch.load(tmp_path / "avatar.pt", weights_only=True)
    del state["face_deform.speech_channels"]  # as saved by an avatar3d before the split encoders
    torch.save(state, tmp_path / "avatar.pt")
    with pytest.raises(UserError, match="does not fit this version of avatar3d.*avatar3d fit"):
        GaussianAvatar.load(tmp_path)


def test_an_avatar_fitted_before_the_code_range_loads_unclamped(synthetic, tmp_path):
    params = tiny_fit_params()
    avatar = init_avatar(load_fit_data(synthetic, params), params, torch.Generator().manual_seed(0))
    assert torch.isfinite(avatar.face_deform.motion_hi).all()  # fit sets the training range
    avatar.save(tmp_path)
    state = torch.load(tmp_path / "avatar.pt", weights_only=True)
    del state["face_deform.motion_lo"], state["face_deform.motion_hi"]
    torch.save(state, tmp_path / "avatar.pt")
    old = GaussianAvatar.load(tmp_path)
    assert torch.isinf(old.face_deform.motion_lo).all() and torch.isinf(old.face_deform.motion_hi).all()


def test_shut_cover_loss_renders_the_turned_lip_box_and_moves_only_the_face(synthetic):
    """The loss is the mouth branch's share over the lip box of a render from the turned pose
    (the box alone is rasterized: it must match the same box of a whole-window render), and its
    gradient reaches the face Gaussians but not the mouth branch's."""
    params = tiny_fit_params(shut_jitter_deg=3.0)
    data = load_fit_data(synthetic, params)
    avatar = init_avatar(data, params, torch.Generator().manual_seed(0))
    i = int(data.train[0])
    cond = data.conditioning(i, params.audio_window, "cpu")
    frame, _ = avatar.deformed(cond)
    loss = shut_cover_loss(avatar, data, i, cond, frame, params, torch.Generator().manual_seed(3), "cpu")

    turn = (torch.rand(2, generator=torch.Generator().manual_seed(3)) * 2 - 1) * params.shut_jitter_deg
    assert float(turn.abs().max()) > 0.5  # the pose is turned
    R = turned(data.R[i], float(turn[0]), float(turn[1]))
    x0, y0, x1, y1 = lip_box(avatar, data, i, cond, R, "cpu")
    assert x1 > x0 and y1 > y0
    S = data.window.size
    cam = Camera.from_pose(data.K, R, data.t[i], S, S)
    with torch.no_grad():
        g, _ = avatar.deformed(cond)
        full = avatar.draw(g, cam, mouth_share=True)  # whole window; channel 3: the mouth's share
    expected = float((full.rgb[y0:y1, x0:x1, 3] ** 2).mean())
    assert expected > 1e-4  # the mouth branch shows through the untrained lips
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)

    loss.backward()
    assert float(avatar.face.params["opacities"].grad.abs().sum()) > 0
    assert all(p.grad is None or not p.grad.any() for p in avatar.mouth.params.values())


def test_closed_mouth_canonical_takes_the_lips_of_the_shut_frames():
    """Frames turning left and right, half with the mouth shut and half open; the canonical face
    (the clip's mean shape) has the lips half open. The closed-mouth canonical recovers the shut
    lips, and keeps the rigid points."""
    from avatar3d.core.vocab import LOWER_INNER_LIP_MID, RIGID_LANDMARKS, UPPER_INNER_LIP_MID

    rng = np.random.default_rng(0)
    shut = rng.uniform(-5, 5, (478, 3)) * np.array([1.0, 1.0, 0.5])
    shut[UPPER_INNER_LIP_MID] = shut[LOWER_INNER_LIP_MID] = [0.0, 2.0, 4.0]
    opened = shut.copy()
    opened[UPPER_INNER_LIP_MID, 1] -= 0.4
    opened[LOWER_INNER_LIP_MID, 1] += 0.4
    K = np.array([[500.0, 0, 256], [0, 500.0, 256], [0, 0, 1]])
    n = 20
    yaw = np.linspace(-0.3, 0.3, n)  # about the head's y axis: lip moves along y keep their depth
    R = np.stack([[[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]] for a in yaw])
    t = np.tile([0.0, 0.0, 45.0], (n, 1))
    shapes = np.stack([shut if i % 2 == 0 else opened for i in range(n)])  # [n, 478, 3]
    cam = np.einsum("fij,fnj->fni", R, shapes) + t[:, None]
    uv = cam @ K.T
    landmarks = np.concatenate([uv[..., :2] / uv[..., 2:], np.zeros((n, 478, 1))], -1).astype(np.float32)
    tracks = {"canonical": ((shut + opened) / 2).astype(np.float32), "landmarks": landmarks, "K": K, "R": R, "t": t}
    closed = closed_mouth_canonical(tracks, np.arange(n))
    np.testing.assert_allclose(closed[[UPPER_INNER_LIP_MID, LOWER_INNER_LIP_MID]], shut[[UPPER_INNER_LIP_MID, LOWER_INNER_LIP_MID]], atol=1e-4)
    rigid = list(RIGID_LANDMARKS)
    np.testing.assert_array_equal(closed[rigid], tracks["canonical"][rigid])
    assert UPPER_INNER_LIP_MID not in rigid and LOWER_INNER_LIP_MID not in rigid


def test_any_preset_field_can_be_overridden_on_the_command_line(synthetic, tmp_path):
    """`--preset FILE --params.steps N --params.strategy.max-gaussians M` fits with the file's
    parameters but those two fields, and the run's config.json says so."""
    from avatar3d.cli import main

    preset = _preset_file(tmp_path, tiny_fit_params(steps=50))
    run = tmp_path / "run"
    rc = main(["fit", str(synthetic), "-o", str(run), "--preset", preset, "--params.steps", "3",
               "--params.strategy.max-gaussians", "900", "--params.prior-finetune-steps", "0", "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    saved = params_from_json(json.loads((run / "config.json").read_text())["params"])
    assert saved == tiny_fit_params(steps=3, prior_finetune_steps=0,
                                    strategy=replace(tiny_fit_params().strategy, max_gaussians=900))
    rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and {"l1", "dssim", "alpha", "total", "psnr_head"} <= set(rows[-1])
    assert (run / "losses.png").is_file() and (run / "scene.json").is_file()


def test_streamed_jpeg_frames_match_the_raw_ones_and_unlock_by_step(synthetic):
    """Frames held as JPEG (the long-clip form) decode to within JPEG error of the raw ones, masks
    exactly; the drawable training frames grow with the step to all of them by stream_all_by."""
    raw = load_fit_data(synthetic, tiny_fit_params())
    jpeg = load_fit_data(synthetic, tiny_fit_params(frame_store="jpeg", stream_first_frames=5, stream_all_by=0.1))
    assert raw.frames.form == "raw" and jpeg.frames.form == "jpeg"
    jpeg.frames.wait(jpeg.num_frames)
    for i in (0, int(jpeg.val[-1])):
        a, b = raw.frame(i), jpeg.frame(i)
        assert torch.equal(a.head, b.head) and torch.equal(a.mouth, b.mouth)
        for x, y in ((a.image, b.image), (a.background, b.background)):
            assert float(psnr(x.float() / 255, y.float() / 255)) > 38.0
    assert jpeg.frames.nbytes() < raw.frames.nbytes()
    steps = tiny_fit_params().steps  # 200: every training frame is drawable from step 20 on
    assert jpeg.drawable(0) == 5 and jpeg.drawable(10) < len(jpeg.train) and jpeg.drawable(20) == len(jpeg.train)
    assert raw.drawable(0) == len(raw.train) and steps == 200


def test_wandb_without_the_package_is_a_one_line_error_before_anything_is_written(synthetic, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kw):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(UserError, match="pip install wandb"):
        run_fit(FitConfig(synthetic, tmp_path / "run", preset=_preset_file(tmp_path, tiny_fit_params()), device="cpu",
                          progress=False, wandb=True))
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


def test_a_wall_budget_finishes_the_run_early_and_val_psnr_is_logged(synthetic, tmp_path):
    """--max-minutes stops the optimisation when the budget is spent and still writes a whole run;
    val_every logs the val frames' head PSNR against the step and the wall time."""
    params = tiny_fit_params(steps=200, val_every=2, prior_finetune_steps=0)
    run = tmp_path / "run"
    metrics = run_fit(FitConfig(synthetic, run, preset=_preset_file(tmp_path, params), device="cpu", progress=False,
                                max_minutes=1e-6))
    assert metrics["steps_done"] == 1 and metrics["steps"] == 200
    assert (run / "avatar.pt").is_file() and (run / "metrics.json").is_file()
    rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1 and "total" in rows[-1]  # the last step's terms are logged
    full = run_fit(FitConfig(synthetic, tmp_path / "run2", preset=_preset_file(tmp_path, replace(params, steps=6)),
                             device="cpu", progress=False))
    val = [json.loads(line) for line in (tmp_path / "run2" / "losses.jsonl").read_text().splitlines()]
    val = [r for r in val if "val_psnr_head" in r]
    assert [r["step"] for r in val] == [2, 4, 6] and all(10 < r["val_psnr_head"] < 60 for r in val)
    assert full["steps_done"] == 6

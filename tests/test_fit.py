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

from avatar3d.gaussian.avatar import Avatar, Conditioning
from avatar3d.core.dataset import (
    BLENDSHAPE_NAMES,
    FORMAT_VERSION,
    DatasetPaths,
    Label,
    Manifest,
    blendshape_index,
    default_split,
)
from avatar3d.gaussian.deform import DeformConfig
from avatar3d.errors import UserError
from avatar3d.fit import (
    PRESETS,
    FitConfig,
    FitParams,
    evaluate,
    Target,
    branch_loss,
    closed_mouth_canonical,
    init_avatar,
    landmark_guidance,
    lip_box,
    shut_cover_loss,
    swap_other_channels,
    turned,
    load_fit_data,
    params_from_json,
    resolve_preset,
    run_fit,
)
from avatar3d.gaussian.gaussians import StrategyConfig
from avatar3d.drive.metrics import MOUTH_LANDMARKS
from avatar3d.gaussian.ply import read_ply
from avatar3d.gaussian.rasterize import Camera, rasterize

SIZE = 64
FRAMES = 30


def _ellipsoid_surface(n: int, radii, g: torch.Generator, front_only: bool) -> torch.Tensor:
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    if front_only:
        d[:, 2] = -d[:, 2].abs()  # the camera looks along +z from z < 0
    return d * torch.tensor(radii)


def make_synthetic_dataset(root: Path, frames: int = FRAMES, size: int = SIZE) -> Path:
    """A dataset in the preprocess layout, rendered from an ellipsoidal head of Gaussians whose
    jaw opens with the ``jawOpen`` blendshape, under known head poses."""
    import cv2

    from avatar3d.fsutil import write_json
    from avatar3d.core.masks import write_masks
    from avatar3d.core.video import write_video

    g = torch.Generator().manual_seed(0)
    paths = DatasetPaths(root)
    root.mkdir(parents=True)
    # head: skin surface, hair cap on top, red lips and a dark mouth interior
    skin = _ellipsoid_surface(700, (7.0, 9.0, 8.0), g, front_only=False)
    skin_col = torch.stack([0.85 + 0.1 * torch.sin(skin[:, 0]), 0.65 + 0.1 * torch.cos(skin[:, 1]),
                            0.5 + 0.05 * torch.sin(skin[:, 2])], 1)
    hair = skin[:, 1] < -5.0
    skin_col[hair] = torch.tensor([0.2, 0.15, 0.1])
    eyes = ((skin[:, 0].abs() - 2.5).abs() < 1.0) & ((skin[:, 1] + 2.0).abs() < 0.8) & (skin[:, 2] < 0)
    skin_col[eyes] = torch.tensor([0.1, 0.1, 0.3])
    mouth_c = torch.tensor([0.0, 4.0, -7.0])
    lips_u = mouth_c + torch.stack([torch.linspace(-2.5, 2.5, 30), torch.full((30,), -0.4), torch.zeros(30)], 1)
    lips_l = mouth_c + torch.stack([torch.linspace(-2.5, 2.5, 30), torch.full((30,), 0.4), torch.zeros(30)], 1)
    cavity = mouth_c + torch.tensor([0.0, 0.6, 1.0]) + torch.randn(80, 3, generator=g) * torch.tensor([1.2, 0.5, 0.3])
    lower_face = (skin[:, 1] > 4.4) & (skin[:, 2] < 0)  # chin moves with the jaw

    t_ = torch.arange(frames, dtype=torch.float32)
    jaw = (0.5 + 0.5 * torch.sin(t_ * 0.7)).clamp(0, 1) ** 2  # [F]
    yaw, pitch = 0.15 * torch.sin(t_ * 0.21), 0.1 * torch.cos(t_ * 0.17)
    K = torch.tensor([[130.0, 0, size / 2], [0, 130.0, size / 2 - 2], [0, 0, 1]])
    plate = torch.stack(torch.meshgrid(torch.linspace(0.2, 0.4, size), torch.linspace(0.3, 0.6, size), indexing="ij"), -1)
    plate = torch.cat([plate, torch.full((size, size, 1), 0.5)], -1)  # [S, S, 3]
    torso_rows = torch.arange(size)[:, None] > size * 0.85

    # landmarks: canonical points on the front of the head, lips at MOUTH_LANDMARKS
    canonical = _ellipsoid_surface(478, (6.5, 8.0, 7.5), g, front_only=True)
    outer, inner = list(MOUTH_LANDMARKS[:20]), list(MOUTH_LANDMARKS[20:])
    ang = torch.linspace(0, 2 * math.pi, 21)[:-1]
    canonical[outer] = mouth_c + torch.stack([2.6 * torch.cos(ang), 0.9 * torch.sin(ang), torch.zeros(20)], 1)
    canonical[inner] = mouth_c + torch.stack([2.0 * torch.cos(ang), 0.3 * torch.sin(ang), torch.zeros(20)], 1)

    images, labels, Rs, ts, lms = [], [], [], [], []
    for f in range(frames):
        cy, sy, cp, sp = math.cos(yaw[f]), math.sin(yaw[f]), math.cos(pitch[f]), math.sin(pitch[f])
        R = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        tv = torch.tensor([0.3 * math.sin(f * 0.3), 0.2 * math.cos(f * 0.25), 50.0])
        open_ = 2.5 * float(jaw[f])
        sk = skin.clone()
        sk[lower_face, 1] += open_
        means = torch.cat([sk, lips_u, lips_l + torch.tensor([0, open_, 0]), cavity])
        cols = torch.cat([skin_col, torch.tensor([0.7, 0.2, 0.2]).expand(60, 3), torch.tensor([0.25, 0.05, 0.05]).expand(80, 3)])
        cls = torch.cat([torch.where(hair[:, None], torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0])),
                         torch.tensor([1.0, 0, 0]).expand(60, 3), torch.tensor([0.0, 1, 0]).expand(80, 3)])
        n = means.shape[0]
        quats = torch.tensor([1.0, 0, 0, 0]).expand(n, 4)
        scales = torch.full((n, 3), 0.6)
        opac = torch.full((n,), 0.95)
        cam = Camera.from_pose(K, R, tv, size, size)
        both, alpha = rasterize(means, quats, scales, opac, torch.cat([cols, cls], 1), cam.K, cam.viewmat, size,
                                size, backend="dense")
        rgb, cls_img = both[..., :3], both[..., 3:]
        back = torch.where(torso_rows[..., None], torch.tensor([0.1, 0.3, 0.2]), plate)
        images.append(((rgb + (1 - alpha) * back) * 255).round().clamp(0, 255).to(torch.uint8).numpy())
        lab = np.full((size, size), Label.BACKGROUND, np.uint8)
        lab[torso_rows.expand(size, size).numpy()] = Label.TORSO
        head = alpha[..., 0].numpy() > 0.5
        kind = cls_img.argmax(-1).numpy()
        lab[head & (kind == 0)] = Label.FACE
        lab[head & (kind == 1)] = Label.MOUTH
        lab[head & (kind == 2)] = Label.HAIR
        labels.append(lab)
        lm = canonical.clone()
        lm[[i for i in inner + outer if canonical[i, 1] > mouth_c[1]], 1] += open_
        pc = lm @ R.T + tv
        uv = pc @ K.T
        depth_px = (pc[:, 2:] - pc[:, 2].mean()) * K[0, 0] / pc[:, 2].mean()  # relative z on the x scale (mediapipe)
        lms.append(torch.cat([uv[:, :2] / uv[:, 2:], depth_px], 1).numpy())
        Rs.append(R.numpy())
        ts.append(tv.numpy())

    write_video(paths.frames, images, crf=12)
    write_masks(paths.masks, labels)
    cv2.imwrite(str(paths.background), (plate.numpy()[..., ::-1] * 255).round().astype(np.uint8))
    bs = np.zeros((frames, len(BLENDSHAPE_NAMES)), np.float32)
    bs[:, blendshape_index("jawOpen")] = jaw.numpy()
    np.savez_compressed(
        paths.tracks, landmarks=np.stack(lms).astype(np.float32), blendshapes=bs, valid=np.ones(frames, bool),
        interpolated=np.zeros(frames, bool), K=K.numpy(), R=np.stack(Rs), t=np.stack(ts),
        canonical=canonical.numpy(),
    )
    paths.features_dir.mkdir()
    mel = np.random.default_rng(0).normal(size=(frames, 4, 80)).astype(np.float32) * 0.1
    mel[:, :, :10] += jaw.numpy()[:, None, None]  # audio that carries the jaw
    np.save(paths.features("mel"), mel)
    manifest = Manifest(
        format_version=FORMAT_VERSION, source_name="synthetic", source_sha256="0" * 64, source_fps=25.0,
        source_duration=frames / 25, fps=25, size=size, num_frames=frames, crop=(0, 0, size),
        split=default_split(frames, 0.2),
    )
    write_json(paths.manifest, manifest.to_json())
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data")


def _params(**kw) -> FitParams:
    base = FitParams(
        steps=200, window="head", image_size=48, num_face=600, num_mouth=60, lr_means=5e-4,
        deform=DeformConfig(num_levels=4, log2_table_size=10, max_resolution=64, hidden=24, cond_dim=8),
        strategy=StrategyConfig(refine_start=60, refine_stop=150, refine_every=30, reset_every=0,
                                grad_threshold=0.0003, split_scale=0.02, max_gaussians=1200),
        checkpoint_every=50, log_every=10,
    )
    return replace(base, **kw)


def _preset_file(tmp_path: Path, params: FitParams) -> str:
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(params.to_json()))
    return str(path)


def test_fit_learns_the_synthetic_head(synthetic, tmp_path):
    params = _params()
    data = load_fit_data(synthetic, params)
    assert data.images.shape == (FRAMES, 48, 48, 3) and data.window.side <= SIZE
    start, _ = evaluate(init_avatar(data, params, torch.Generator().manual_seed(0)), data, params, "cpu",
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
    avatar = Avatar.load(run)
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
    from avatar3d.audio.prior import MOTION_NAMES

    cond = Conditioning(torch.zeros(1, len(BLENDSHAPE_NAMES)), torch.ones(1, 4, 3))
    swapped = swap_other_channels(cond, torch.ones(len(BLENDSHAPE_NAMES)))
    driven = [blendshape_index(n) for n in MOTION_NAMES]
    others = [k for k in range(len(BLENDSHAPE_NAMES)) if k not in driven]
    assert float(swapped.motion[0, driven].abs().max()) == 0.0  # the mouth code stays this frame's
    assert float(swapped.motion[0, others].min()) == 1.0 and len(others) == len(BLENDSHAPE_NAMES) - len(MOTION_NAMES)
    assert swapped.audio is cond.audio


def test_landmark_guidance_teaches_the_field_where_the_lips_go(synthetic):
    """Optimising the guidance alone moves the field's lip landmarks onto the tracked ones: the
    lower lip drops with jawOpen, by about as much as the tracker saw."""
    params = _params()
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
    for step in range(300):
        opt.zero_grad()
        guidance(train[step % len(train)]).backward()
        opt.step()
    after = float(torch.stack([guidance(i).detach() for i in train]).mean())
    assert after < 0.4 * before, (before, after)
    opened = moved_gap(wide) - moved_gap(shut)
    assert opened == pytest.approx(tracked_gap[wide] - tracked_gap[shut], rel=0.35), (opened, tracked_gap)


def test_fit_with_audio_features_learns(synthetic, tmp_path):
    params = _params(steps=120, audio_features="mel", audio_window=4)
    metrics = run_fit(FitConfig(synthetic, tmp_path / "run", preset=_preset_file(tmp_path, params), device="cpu",
                                progress=False))
    assert metrics["psnr_head"] > 20.0
    avatar = Avatar.load(tmp_path / "run")
    assert avatar.spec.audio_features == "mel" and avatar.spec.audio_window == 4
    with pytest.raises(ValueError, match="audio"):
        avatar.render(Conditioning(torch.zeros(1, 52)), Camera(torch.eye(3), torch.eye(4), 8, 8))


def test_resume_after_a_kill_continues_from_the_checkpoint(synthetic, tmp_path):
    params = _params(steps=12, checkpoint_every=5,
                     strategy=StrategyConfig(refine_start=4, refine_every=4, reset_every=0, grad_threshold=1e-4,
                                             split_scale=0.02, max_gaussians=1500))
    preset = _preset_file(tmp_path, params)
    full = run_fit(FitConfig(synthetic, tmp_path / "a", preset=preset, device="cpu", progress=False, threads=1))

    def kill_at_7(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt

    cfg = FitConfig(synthetic, tmp_path / "b", preset=preset, device="cpu", progress=False, threads=1)
    with pytest.raises(KeyboardInterrupt):
        run_fit(cfg, on_step=kill_at_7)
    assert (tmp_path / ".b.partial" / "checkpoint.pt").is_file() and not (tmp_path / "b").exists()
    seen: list[int] = []
    resumed = run_fit(replace(cfg, resume=True, preset="default"), on_step=seen.append)  # saved params win
    assert seen == list(range(6, 13))  # continued after the step-5 checkpoint
    a = torch.load(tmp_path / "a" / "avatar.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "avatar.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:  # the same trajectory as the uninterrupted fit (densification included)
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
    assert resumed["psnr_head"] == pytest.approx(full["psnr_head"], abs=1e-3)
    with pytest.raises(UserError, match="nothing to resume"):
        run_fit(replace(cfg, resume=True))


def test_presets_and_their_json_files_agree():
    for name, params in PRESETS.items():
        path = Path(__file__).resolve().parents[1] / "configs" / f"fit_{name}.json"
        assert params_from_json(json.loads(path.read_text())) == params, f"{path} is stale"
        assert resolve_preset(str(path)) == params
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
    params = _params()
    avatar = init_avatar(load_fit_data(synthetic, params), params, torch.Generator().manual_seed(0))
    avatar.save(tmp_path)
    state = torch.load(tmp_path / "avatar.pt", weights_only=True)
    del state["face_deform.speech_channels"]  # as saved by an avatar3d before the split encoders
    torch.save(state, tmp_path / "avatar.pt")
    with pytest.raises(UserError, match="does not fit this version of avatar3d.*avatar3d fit"):
        Avatar.load(tmp_path)


def test_an_avatar_fitted_before_the_code_range_loads_unclamped(synthetic, tmp_path):
    params = _params()
    avatar = init_avatar(load_fit_data(synthetic, params), params, torch.Generator().manual_seed(0))
    assert torch.isfinite(avatar.face_deform.motion_hi).all()  # fit sets the training range
    avatar.save(tmp_path)
    state = torch.load(tmp_path / "avatar.pt", weights_only=True)
    del state["face_deform.motion_lo"], state["face_deform.motion_hi"]
    torch.save(state, tmp_path / "avatar.pt")
    old = Avatar.load(tmp_path)
    assert torch.isinf(old.face_deform.motion_lo).all() and torch.isinf(old.face_deform.motion_hi).all()


def test_shut_cover_loss_renders_the_turned_lip_box_and_moves_only_the_face(synthetic):
    """The loss is the mouth branch's share over the lip box of a render from the turned pose
    (the box alone is rasterized: it must match the same box of a whole-window render), and its
    gradient reaches the face Gaussians but not the mouth branch's."""
    params = _params(shut_jitter_deg=3.0)
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
    from avatar3d.preprocess.pose import RIGID_LANDMARKS
    from avatar3d.drive.sync import LOWER_INNER_LIP, UPPER_INNER_LIP

    rng = np.random.default_rng(0)
    shut = rng.uniform(-5, 5, (478, 3)) * np.array([1.0, 1.0, 0.5])
    shut[UPPER_INNER_LIP] = shut[LOWER_INNER_LIP] = [0.0, 2.0, 4.0]
    opened = shut.copy()
    opened[UPPER_INNER_LIP, 1] -= 0.4
    opened[LOWER_INNER_LIP, 1] += 0.4
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
    np.testing.assert_allclose(closed[[UPPER_INNER_LIP, LOWER_INNER_LIP]], shut[[UPPER_INNER_LIP, LOWER_INNER_LIP]], atol=1e-4)
    rigid = list(RIGID_LANDMARKS)
    np.testing.assert_array_equal(closed[rigid], tracks["canonical"][rigid])
    assert UPPER_INNER_LIP not in rigid and LOWER_INNER_LIP not in rigid

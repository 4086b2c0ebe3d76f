"""``avatar3d preprocess VIDEO -o DATA_DIR``: a talking-head clip -> a dataset (see avatar3d.core.dataset).

Stages run in order: decode, track, pose, parse, background, audio_features, contact_sheet; then
report.json and the per-file checksums. The dataset is built in the hidden sibling
``.DATA_DIR.partial`` and renamed into place only when complete, so a crash or a bad input never
leaves a half-written DATA_DIR. After every stage the manifest (written atomically) records the
stage's code version, a hash of its options and its time, so a rerun after a crash resumes where
it stopped; a rerun on a complete dataset of the same source reports "up to date" and redoes
nothing; ``--force`` redoes every stage (in the partial folder, swapped in at the end).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import tyro

from avatar3d import fsutil
from avatar3d.fsutil import sha256_file
from avatar3d.core.dataset import (
    FORMAT_VERSION,
    FPS,
    DatasetPaths,
    Manifest,
    StageRecord,
    default_split,
    read_manifest,
)
from avatar3d.core.config import json_safe
from avatar3d.errors import UserError
from avatar3d.preprocess.audio_features import AudioFeatureConfig
from avatar3d.preprocess.background import BackgroundConfig
from avatar3d.preprocess.decode import DecodeConfig
from avatar3d.preprocess.parse import ParseConfig
from avatar3d.preprocess.pose import PoseConfig
from avatar3d.preprocess.track import TrackConfig


@dataclass(frozen=True)
class PreprocessConfig:
    """Turn a talking-head clip into a dataset: 25 fps frames, audio, tracks, poses, masks."""

    video: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="VIDEO")]
    """The input clip: one person talking to the camera, with sound (mp4, mov, mkv, ...)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",), metavar="DATA_DIR")]
    """Dataset folder to write (built in a hidden .NAME.partial sibling, renamed when done)."""
    size: int = 512
    """Side of the square frames of the dataset, pixels."""
    force: bool = False
    """Redo every stage even if the dataset (or a partial one) is up to date."""
    val_fraction: float = 0.1
    """Fraction of frames, at the end of the clip, held out for validation."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    parse: ParseConfig = field(default_factory=ParseConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    audio: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)


@dataclass(frozen=True)
class Stage:
    """One cached step after decode: ``run(paths, manifest) -> stats``."""

    name: str
    version: int
    params: str  # hash of the options that change its output
    run: Callable[[DatasetPaths, Manifest], dict | None]


def _params_hash(*parts: Any) -> str:
    text = json.dumps(json_safe(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(module_name: str) -> int:
    module = importlib.import_module(f"avatar3d.preprocess.{module_name}")
    return int(getattr(module, "VERSION", getattr(module, "STAGE_VERSION", 1)))


def _stages(config: PreprocessConfig) -> list[Stage]:
    """The cached stages after decode, in order."""
    from avatar3d.preprocess.audio_features import run_audio_features
    from avatar3d.preprocess.background import run_background
    from avatar3d.preprocess.contact_sheet import make_contact_sheet
    from avatar3d.preprocess.parse import run_parse
    from avatar3d.preprocess.pose import run_pose
    from avatar3d.preprocess.track import run_track

    track_params = {k: v for k, v in asdict(config.track).items() if k not in ("face_model", "face_model_url")}
    pose_params = {k: v for k, v in asdict(config.pose).items() if k != "device"}
    audio_params = {k: v for k, v in asdict(config.audio).items() if k != "device"}
    return [
        Stage("track", _version("track"), _params_hash(track_params), lambda p, m: run_track(p, m, config.track)),
        Stage("pose", _version("pose"), _params_hash(pose_params), lambda p, m: run_pose(p, m, config.pose)),
        Stage("parse", _version("parse"), _params_hash(config.parse), lambda p, m: run_parse(p, m, config.parse)),
        Stage(
            "background", _version("background"), _params_hash(config.background),
            lambda p, m: run_background(p, m, config.background),
        ),
        Stage(
            "audio_features", _version("audio_features"), _params_hash(audio_params),
            lambda p, m: run_audio_features(p, m, config.audio),
        ),
        Stage("contact_sheet", _version("contact_sheet"), "", lambda p, m: make_contact_sheet(p, m)),
    ]


DECODE_STAGE = "decode"


def _decode_params(config: PreprocessConfig) -> str:
    return _params_hash(config.size, config.decode)


def _is_current(manifest: Manifest, name: str, version: int, params: str) -> bool:
    rec = manifest.stages.get(name)
    return rec is not None and rec.version == version and rec.params == params


def _all_current(manifest: Manifest, config: PreprocessConfig, stages: list[Stage]) -> bool:
    from avatar3d.preprocess import decode

    if not _is_current(manifest, DECODE_STAGE, decode.VERSION, _decode_params(config)):
        return False
    if manifest.split != default_split(manifest.num_frames, config.val_fraction):
        return False
    return all(_is_current(manifest, s.name, s.version, s.params) for s in stages)


def _check_output(output: Path, source_sha: str) -> Manifest | None:
    """The manifest of an existing dataset of the same source at ``output``, or None if there is
    none; UserError if ``output`` holds anything else (it is never touched then)."""
    if not output.exists():
        return None
    if not output.is_dir():
        raise UserError(f"output {output} exists and is not a folder")
    paths = DatasetPaths(output)
    if not paths.manifest.is_file():
        if any(output.iterdir()):
            raise UserError(f"output folder {output} is not empty and is not an avatar3d dataset")
        return None
    try:
        manifest = read_manifest(output)
    except UserError as exc:
        raise UserError(f"output folder {output} holds something else ({exc}): choose another -o") from None
    if manifest.source_sha256 != source_sha:
        raise UserError(
            f"output folder {output} already holds a dataset of a different video "
            f"({manifest.source_name}): choose another -o or delete it"
        )
    return manifest


def _read_partial(work: Path, source_sha: str) -> Manifest | None:
    try:
        manifest = read_manifest(work)
    except UserError:
        return None
    return manifest if manifest.source_sha256 == source_sha else None


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _file_hashes(root: Path) -> dict[str, str]:
    paths = DatasetPaths(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p != paths.manifest and not p.name.startswith("."):
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def _report(manifest: Manifest, stats: dict[str, dict], root: Path) -> dict:
    """report.json: the numbers a person checks first, then every stage's own stats."""
    track = stats.get("track", {})
    pose = stats.get("pose", {})
    n = manifest.num_frames
    return json_safe({
        "source": manifest.source_name,
        "frames": n,
        "fps": manifest.fps,
        "size": manifest.size,
        "duration_s": round(n / manifest.fps, 3),
        "source_duration_s": round(manifest.source_duration, 3),
        "source_fps": manifest.source_fps,
        "crop": list(manifest.crop),
        "frames_tracked": track.get("frames_tracked"),
        "tracked_fraction": track.get("tracked_fraction"),
        "frames_interpolated": track.get("frames_interpolated"),
        "long_gaps": track.get("long_gaps"),
        "reprojection_px_median": pose.get("reprojection_px_median"),
        "reprojection_px_p95": pose.get("reprojection_px_p95"),
        "jitter": pose.get("jitter"),
        "av_offset_ms": _av_offset(stats).get("ms"),
        "timings_s": {name: round(rec.seconds, 3) for name, rec in manifest.stages.items()},
        "total_stage_seconds": round(sum(rec.seconds for rec in manifest.stages.values()), 3),
        "dataset_bytes": _dir_bytes(root),
        "source_picture": manifest.source_picture,
        "peak_rss_gb": peak_rss_gb(),
        "stages": stats,
    })


def peak_rss_gb() -> float | None:
    """This process's peak resident memory so far, GB: /proc's VmHWM where there is one (unlike
    ru_maxrss it is not inherited from a parent that forked us), else ru_maxrss."""
    import re
    import resource

    try:
        with open("/proc/self/status") as f:
            return round(int(re.search(r"VmHWM:\s*(\d+)", f.read()).group(1)) / 1024**2, 3)
    except (OSError, AttributeError, ValueError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)


AV_OFFSET_WARN_FRAMES = 3  # 120 ms: mouths lead their sound by a frame or so; this is beyond it


def _av_offset(stats: dict[str, dict]) -> dict:
    """The audio_features stage's audio/mouth offset (see ``measure_av_offset``), or {}."""
    return dict(stats.get("audio_features", {}).get("mel", {}).get("av_offset") or {})


def av_offset_warning(offset: dict) -> str | None:
    """A line for the user when the audio is clearly out of sync with the mouth, else None. Clear
    means all of: the best lag is ``AV_OFFSET_WARN_FRAMES`` or more; it correlates better than lag
    0 by 0.1 or more (a speaker's jaw/loudness r can be as low as 0.1-0.3 even in sync:
    BENCHMARKS.md, prior); it is a peak inside the searched range, not its edge (a correlation
    still rising at the edge is the slow rhythm of speech, not an offset); and at least 3 of the
    clip's 4 parts find it too (within a frame): a real offset is the same all through a clip."""
    frames, r, r0 = offset.get("frames"), offset.get("r"), offset.get("r_in_sync")
    if frames is None or r is None or r0 is None or abs(frames) < AV_OFFSET_WARN_FRAMES or r - r0 < 0.1:
        return None
    max_lag, segments = offset.get("max_lag"), offset.get("segment_lags")
    if max_lag is not None and abs(frames) >= max_lag:
        return None
    if segments is not None and sum(s is not None and abs(s - frames) <= 1 for s in segments) < 3:
        return None
    way = "trails" if frames > 0 else "leads"
    return (
        f"avatar3d preprocess: warning: the audio {way} the mouth by {abs(offset['ms'])} ms "
        f"({abs(frames)} frames; jawOpen/loudness r {r:.2f} there, {offset['r_in_sync']:.2f} in sync): "
        "prior training and fine-tuning shift the tracks by it, but check the source's sync"
    )


def _say(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


def run_preprocess(config: PreprocessConfig) -> Path:
    """Build (or bring up to date) the dataset ``config.output`` from ``config.video``."""
    from avatar3d.preprocess import decode
    from avatar3d.core.video import probe

    t_start = time.perf_counter()
    source = Path(config.video).expanduser()
    output = Path(config.output).expanduser().absolute()
    if config.size < 64 or config.size % 2:
        raise UserError(f"--size must be an even number of pixels >= 64, got {config.size}")
    if not 0.0 < config.val_fraction < 0.5:
        raise UserError(f"--val-fraction must be in (0, 0.5), got {config.val_fraction}")
    info = probe(source)  # missing / unreadable file -> UserError before anything is written
    decode.check_source(info, config.decode.min_duration)
    picture = info.picture or {}
    if picture.get("orientation", "none") != "none":
        _say(f"avatar3d preprocess: {source.name} carries a display rotation: frames turned upright ({picture['orientation']})")
    if picture.get("hdr", "none") != "none":
        _say(f"avatar3d preprocess: {source.name} is HDR video: converted {picture['hdr']}")
    source_sha = sha256_file(source)
    existing = _check_output(output, source_sha)
    stages = _stages(config)
    if existing is not None and not config.force and _all_current(existing, config, stages):
        _say(f"avatar3d preprocess: {output} is up to date ({existing.num_frames} frames); nothing to do")
        return output

    work = fsutil.work_dir_for(output)
    manifest = None if config.force else _read_partial(work, source_sha)
    if manifest is None:
        shutil.rmtree(work, ignore_errors=True)
        if existing is not None and not config.force:
            shutil.copytree(output, work)  # bring a stale dataset up to date without touching it
            manifest = existing
        else:
            work.mkdir(parents=True)
    else:
        _say(f"avatar3d preprocess: resuming from {work}")
    paths = DatasetPaths(work)
    stats: dict[str, dict] = {}
    if paths.report.is_file():
        try:
            stats = dict(json.loads(paths.report.read_text()).get("stages", {}))
        except (OSError, ValueError):
            stats = {}

    try:
        redo = manifest is None or not _is_current(manifest, DECODE_STAGE, decode.VERSION, _decode_params(config))
        if redo:
            t0 = time.perf_counter()
            model = config.track.model_path()
            result = decode.run_decode(source, paths, config.size, config.decode, model)
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                source_name=source.name,
                source_sha256=source_sha,
                source_fps=result.source_fps,
                source_duration=result.source_duration,
                fps=FPS,
                size=config.size,
                num_frames=result.num_frames,
                crop=result.crop,
                split=default_split(result.num_frames, config.val_fraction),
                source_picture=result.picture,
            )
            manifest.stages[DECODE_STAGE] = StageRecord(decode.VERSION, time.perf_counter() - t0, _decode_params(config))
            stats = {DECODE_STAGE: result.stats}
            fsutil.write_json(paths.manifest, manifest.to_json())
        assert manifest is not None
        manifest.split = default_split(manifest.num_frames, config.val_fraction)
        for stage in stages:
            if not redo and _is_current(manifest, stage.name, stage.version, stage.params):
                continue
            redo = True  # every later stage depends on this one
            manifest.stages.pop(stage.name, None)
            t0 = time.perf_counter()
            stage_stats = stage.run(paths, manifest) or {}
            manifest.stages[stage.name] = StageRecord(stage.version, time.perf_counter() - t0, stage.params)
            stats[stage.name] = json_safe(stage_stats)
            fsutil.write_json(paths.manifest, manifest.to_json())
            fsutil.write_json(paths.report, {"stages": stats})  # keeps stats for a resumed run
        manifest.files = {}
        fsutil.write_json(paths.manifest, manifest.to_json())
        report = _report(manifest, stats, work)
        fsutil.write_json(paths.report, report)
        manifest.files = _file_hashes(work)
        fsutil.write_json(paths.manifest, manifest.to_json())
    except UserError:
        shutil.rmtree(work, ignore_errors=True)  # the input is at fault: a rerun would fail the same way
        raise
    fsutil.commit_dir(work, output)
    wall = time.perf_counter() - t_start
    mb = _dir_bytes(output) / 1e6
    _say(
        f"avatar3d preprocess: {manifest.num_frames} frames ({manifest.num_frames / FPS:.1f} s) -> {output}: "
        f"tracked {100 * (report['tracked_fraction'] or 0):.1f}%, reprojection median "
        f"{report['reprojection_px_median']} px (p95 {report['reprojection_px_p95']}), {mb:.1f} MB, {wall:.1f} s"
    )
    warning = av_offset_warning(_av_offset(stats))
    if warning:
        _say(warning)
    return output

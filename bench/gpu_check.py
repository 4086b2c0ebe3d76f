"""Every GPU claim in one prepared call (issue 21): build, GPU tests, hash-grid bench, a fit on a
time budget, render FPS, the live viewer's frame rate and latency; one JSON and a Markdown summary under --out.

    python bench/gpu_check.py --out OUT --data DATASET            # on a CUDA machine, ~9 minutes
    python bench/gpu_check.py --out OUT --data DATASET --dry-run  # the same steps on the CPU, toy sizes

Each step runs (in a subprocess where a crash must not stop the rest), or says exactly why it was
skipped, and its failure is recorded and printed without stopping the others:

1. ``environment``: Python, torch, CUDA, the GPU, gsplat, nvcc;
2. ``build_cuda_ext``: the hash-grid extension JIT-built for this GPU's architecture (timed);
3. ``build_gsplat``: gsplat's kernels built on their first call, limited to the same arch (timed);
4. ``gpu_tests``: the CUDA tests (hash grid against its twin, gsplat against the dense
   rasterizer, split on CUDA, a short CUDA fit with densification killed and resumed), with
   pytest's report;
5. ``hashgrid_bench``: bench/hashgrid.py (2^20 points, tri-plane L=16 F=2 T=19, CUDA vs twin,
   the bandwidth floor);
6. ``fit``: ``avatar3d fit DATASET --preset default`` for ``--fit-minutes`` of wall time, logging
   val head PSNR against time (``params.val_every``);
7. ``render_fps``: bench/render_fps.py on what step 6 fitted, head only at 512² and whole
   composited frames;
8. ``viewer``: ``avatar3d view`` of that run on the GPU with bench/viewer.py's WebSocket client
   (the dataset's audio at real-time pace): frames delivered per second at 128², 256², 512², and
   the server + network part of the live latency (no browser there: the 120 ms of audio and the
   page's decode are added in BENCHMARKS.md);
9. ``nerf``: ``avatar3d fit DATASET --field nerf --preset tiny`` for a minute on the GPU (its hash
   grid through the CUDA kernels) and bench/render_fps.py on it (about 2 minutes in all).

``bench/gpu_carry.py`` prepares what travels with the call (the dataset, the wheels the GPU
machine lacks); BENCHMARKS.md has the exact call.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
GPU_TESTS = (
    "tests/test_hashgrid_cuda.py",
    "tests/test_rasterize.py::test_gsplat_matches_dense_on_cuda",
    "tests/test_gaussians.py::test_split_on_cuda_with_the_fits_cpu_generator_matches_the_cpu_split",
    "tests/test_fit.py::test_resume_after_a_kill_continues_from_the_checkpoint[cuda]",  # a short CUDA fit:
    # densification (split with the fit's CPU generator), a kill, a resume, the same weights
)


@dataclass
class Step:
    """One step's outcome: ``ok``, ``failed`` (with the error) or ``skipped`` (with why)."""

    name: str
    status: str = "ok"
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)


class Skip(Exception):
    """Raised by a step that cannot run here; the message says why."""


def run_step(name: str, fn, steps: list[Step]) -> Step:
    """Run ``fn() -> dict`` as step ``name``, recording its outcome; never raises."""
    step = Step(name)
    t0 = time.time()
    try:
        step.data = fn() or {}
    except Skip as why:
        step.status, step.detail = "skipped", str(why)
    except Exception as exc:  # noqa: BLE001 - recorded, the next step still runs
        step.status = "failed"
        step.detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        step.data = {"traceback": traceback.format_exc()[-2000:]}
    step.seconds = round(time.time() - t0, 1)
    steps.append(step)
    print(f"[gpu_check] {name}: {step.status} ({step.seconds} s){': ' + step.detail if step.detail else ''}",
          flush=True)
    return step


def sh(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the repo, its output to ``log``; RuntimeError naming the log when it fails."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = log.read_text()[-600:].strip().splitlines()
        raise RuntimeError(f"exit {proc.returncode}: {tail[-1] if tail else ''} (log {log.name})")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON, the summary and the logs")
    ap.add_argument("--data", type=Path, required=True, help="a preprocessed dataset to fit (e.g. the 20 s Obama)")
    ap.add_argument("--fit-minutes", type=float, default=3.0, help="wall budget of the fit")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the script itself")
    args = ap.parse_args()

    import torch

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    cuda = torch.cuda.is_available() and not dry
    no_cuda = "dry run (CPU)" if dry else f"CUDA is not available (torch {torch.__version__}, CUDA {torch.version.cuda})"
    device = "cuda" if cuda else "cpu"
    py = sys.executable
    steps: list[Step] = []
    t_start = time.time()
    arch_env = {}
    if cuda and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        major, minor = torch.cuda.get_device_capability(0)
        arch_env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # build for this GPU only
        os.environ.update(arch_env)

    def environment() -> dict:
        info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, **arch_env}
        try:
            import gsplat

            info["gsplat"] = gsplat.__version__
        except ImportError as exc:
            info["gsplat"] = f"not installed ({exc})"
        nvcc = shutil.which("nvcc")
        info["nvcc"] = (subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
                        or ["?"])[-1] if nvcc else None
        return info

    def build_cuda_ext() -> dict:
        if not cuda:
            raise Skip(no_cuda)
        from avatar3d.cuda_ext._backend import cuda_unavailable_reason

        reason = cuda_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        return {}

    def build_gsplat() -> dict:
        if not cuda:
            raise Skip(no_cuda)
        # in a subprocess with a deadline: gsplat compiles all its kernels on the first call; a
        # build cut short resumes where it stopped (ninja) the next time
        code = ("import sys; from avatar3d.gaussian.rasterize import gsplat_unavailable_reason as r; "
                "why = r(0); print(why or 'ok'); sys.exit(1 if why else 0)")
        sh([py, "-c", code], out / "build_gsplat.log", 300, arch_env)
        return {}

    def gpu_tests() -> dict:
        xml = out / "gpu_tests.xml"
        proc = subprocess.run([py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}",
                               *GPU_TESTS], cwd=REPO, capture_output=True, text=True, timeout=300)
        (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
        import xml.etree.ElementTree as ET

        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        skips = sorted({s.get("message", "") for s in suite.iter("skipped")})
        if counts["failures"] or counts["errors"]:
            raise RuntimeError(f"{counts['failures']} failed, {counts['errors']} errors of {counts['tests']} (gpu_tests.log)")
        if counts["skipped"] == counts["tests"]:
            raise Skip(f"all {counts['tests']} GPU tests skipped: {'; '.join(skips)}")
        return {**counts, "skip_reasons": skips}

    def hashgrid_bench() -> dict:
        res = out / "hashgrid.json"
        if cuda:
            sh([py, "bench/hashgrid.py", str(res), "--device", "cuda"], out / "hashgrid.log", 300)
        else:  # the twin at toy size: checks the script and the report, not the speed
            sh([py, "bench/hashgrid.py", str(res), "--device", "cpu", "--points", "4096", "--repeats", "1",
                "--warmup", "0", "--log2-table-size", "12", "--max-resolution", "128"], out / "hashgrid.log", 300)
        r = json.loads(res.read_text())
        keep = {k: v for k, v in r.items() if k.startswith("speedup")}
        for impl, v in r["results"].items():
            keep[f"{impl}_forward_backward_ms"] = v["forward_backward"]["median_ms"]
            keep[f"{impl}_floor_fraction"] = v["floor_fraction"]
        keep["bandwidth_gbytes_per_s"] = r["bandwidth"]["gbytes_per_s"]
        return keep

    run = out / "run"

    def fit() -> dict:
        if run.exists():
            shutil.rmtree(run)
        common = [py, "-m", "avatar3d.cli", "fit", str(args.data), "-o", str(run), "--no-progress"]
        if cuda:
            cmd = [*common, "--preset", "default", "--device", "cuda", "--threads", "0",
                   "--max-minutes", str(args.fit_minutes), "--params.val-every", "250", "--params.backend", backend]
        else:
            cmd = [*common, "--preset", "tiny", "--device", "cpu", "--params.steps", "20", "--params.val-every", "10",
                   "--params.prior-finetune-steps", "0", "--params.image-size", "48"]
        sh(cmd, out / "fit.log", 60 * args.fit_minutes + 240)
        metrics = json.loads((run / "metrics.json").read_text())
        rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines() if line.strip()]
        curve = [(r["seconds"], r["step"], round(r["val_psnr_head"], 2)) for r in rows if "val_psnr_head" in r]
        keep = ("psnr", "psnr_head", "ssim_head", "lmd_px", "lmd_unavailable", "steps_done", "steps", "fit_seconds",
                "num_face", "num_mouth", "frame_store", "resolution")
        return {**{k: metrics.get(k) for k in keep}, "val_psnr_head_over_time": curve}

    def render_fps() -> dict:
        if not (run / "avatar.pt").is_file():
            raise Skip("no fitted run (the fit step did not finish)")
        res = out / "render_fps.json"
        size = [] if cuda else ["--size", "48"]
        frames = ["--frames", "200", "--warmup", "20"] if cuda else ["--frames", "3", "--warmup", "1"]
        sh([py, "bench/render_fps.py", str(run), str(args.data), "--out", str(res), "--device", device, "--composite",
            "--backend", backend, *size, *frames], out / "render_fps.log", 300)
        r = json.loads(res.read_text())
        return {k: r[k] for k in ("fps", "size", "gaussians", "backend", "composite_fps", "composite_frame_size")}

    def viewer() -> dict:
        if not (run / "avatar.pt").is_file():
            raise Skip("no fitted run (the fit step did not finish)")
        res = out / "viewer.json"
        seconds = "8" if cuda else "1"
        sh([py, "bench/viewer.py", str(run), "--skip", "latency", "drift", "--device", device, "--fps-seconds", seconds,
            "--speech", str(args.data / "audio.wav"), "--out", str(res)], out / "viewer.log", 180)
        return {f"{r['resolution']}": {k: r[k] for k in ("fps_delivered", "render_ms_p50", "server_network_ms_p50",
                                                         "server_network_ms_p95")}
                for r in json.loads(res.read_text())["fps"]["tiny"]}

    nerf_run = out / "run_nerf"

    def nerf() -> dict:
        """The NeRF field on the GPU (its hash grid through the CUDA kernels): a short tiny fit and
        its render speed at the window's size."""
        if nerf_run.exists():
            shutil.rmtree(nerf_run)
        common = [py, "-m", "avatar3d.cli", "fit", str(args.data), "-o", str(nerf_run), "--field", "nerf", "--no-progress",
                  "--preset", "tiny", "--params.prior-finetune-steps", "0"]
        if cuda:
            cmd = [*common, "--device", "cuda", "--threads", "0", "--params.steps", "3000", "--max-minutes", "1"]
        else:
            cmd = [*common, "--device", "cpu", "--params.steps", "10", "--params.image-size", "48"]
        sh(cmd, out / "nerf_fit.log", 240)
        metrics = json.loads((nerf_run / "metrics.json").read_text())
        res = out / "nerf_render_fps.json"
        frames = ["--frames", "50", "--warmup", "5"] if cuda else ["--frames", "2", "--warmup", "1", "--size", "48"]
        sh([py, "bench/render_fps.py", str(nerf_run), str(args.data), "--out", str(res), "--device", device, *frames],
           out / "nerf_render_fps.log", 240)
        r = json.loads(res.read_text())
        return {**{k: metrics.get(k) for k in ("psnr", "psnr_head", "lmd_px", "steps_done", "fit_seconds")},
                "render_fps": r["fps"], "render_size": r["size"]}

    run_step("environment", environment, steps)
    run_step("build_cuda_ext", build_cuda_ext, steps)
    gsplat_ok = run_step("build_gsplat", build_gsplat, steps).status == "ok"
    backend = "gsplat" if gsplat_ok else "dense"  # never build gsplat twice in one check
    run_step("gpu_tests", gpu_tests, steps)
    run_step("hashgrid_bench", hashgrid_bench, steps)
    run_step("fit", fit, steps)
    run_step("render_fps", render_fps, steps)
    run_step("viewer", viewer, steps)
    run_step("nerf", nerf, steps)

    report = {"dry_run": dry, "seconds": round(time.time() - t_start, 1), **provenance(device),
              "steps": [asdict(s) for s in steps]}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(summary_markdown(report))
    failed = [s.name for s in steps if s.status == "failed"]
    print(f"[gpu_check] {len(steps)} steps in {report['seconds']} s: "
          f"{sum(s.status == 'ok' for s in steps)} ok, {len(failed)} failed {failed or ''}, "
          f"{sum(s.status == 'skipped' for s in steps)} skipped; {out / 'gpu_check.md'}")
    return 1 if failed else 0


def summary_markdown(report: dict) -> str:
    """The report as a short Markdown table (what BENCHMARKS.md quotes)."""
    lines = [f"# GPU check ({'dry run, CPU' if report['dry_run'] else report['device']})", "",
             f"commit {report['commit']}, torch {report['torch']}, {report['seconds']} s", "",
             "| step | status | seconds | what |", "|---|---|---|---|"]
    for s in report["steps"]:
        data = {k: v for k, v in s["data"].items() if k != "traceback"}
        what = s["detail"] or ", ".join(f"{k} {v}" for k, v in data.items() if not isinstance(v, (list, dict)))
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {what[:400]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""bench/gpu_check.py --dry-run: the one-call GPU check runs every step on the CPU at toy sizes, or
says exactly why a step cannot run here, so the script is known to work before a GPU is at hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from synth_dataset import make_fit_dataset, speechy_audio

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_or_explains_every_step(tmp_path):
    import soundfile as sf

    data = make_fit_dataset(tmp_path / "data", frames=16)
    sf.write(str(data / "audio.wav"), speechy_audio(16 / 25), 16_000, subtype="PCM_16")  # the viewer step's speech
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(out), "--data", str(data)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["environment", "build_cuda_ext", "build_gsplat", "gpu_tests", "hashgrid_bench", "fit",
                           "render_fps", "viewer", "nerf"]
    assert all(s["status"] in ("ok", "skipped") for s in steps.values()), steps
    assert all(s["detail"] for s in steps.values() if s["status"] == "skipped")  # every skip says why
    assert steps["build_cuda_ext"]["status"] == steps["build_gsplat"]["status"] == "skipped"
    assert steps["gpu_tests"]["status"] == "skipped" and "CUDA" in steps["gpu_tests"]["detail"]
    assert steps["hashgrid_bench"]["data"]["torch_forward_backward_ms"] > 0
    fit = steps["fit"]["data"]
    assert fit["steps_done"] == 20 and [c[1] for c in fit["val_psnr_head_over_time"]] == [10, 20]
    assert steps["render_fps"]["data"]["fps"] > 0 and steps["render_fps"]["data"]["composite_fps"] > 0
    assert set(steps["viewer"]["data"]) == {"128", "256", "512"}
    assert steps["nerf"]["data"]["steps_done"] == 10 and steps["nerf"]["data"]["render_fps"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "| fit | ok |" in md and "| gpu_tests | skipped |" in md

"""Benchmark: tri-plane hash-grid encoding, CUDA kernels vs the PyTorch twin on the same device.

Times forward and forward+backward of ``TriPlaneHashGrid`` (default 2**20 points, L=16, F=2,
T=19, resolutions 16..2048) and compares with a floor: the bytes the op must move at least
(inputs and outputs once each way, each table read once, each table gradient written once)
divided by the device's memory bandwidth measured with a large device-to-device copy.

    python bench/hashgrid.py                        # CUDA; writes bench/results/hashgrid.json
    python bench/hashgrid.py /tmp/h.json --device cpu   # times the twin on CPU (2**16 points)

On a machine without CUDA the default (--device cuda) says so and exits with status 1.
"""
from __future__ import annotations

import dataclasses
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Literal

import torch
import tyro

from avatar3d.cuda_ext import TriPlaneHashGrid
from avatar3d.cuda_ext._backend import cuda_unavailable_reason
from avatar3d.fsutil import write_json

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Hash-grid benchmark settings."""

    out: tyro.conf.Positional[Path] = Path("bench/results/hashgrid.json")
    """Where to write the JSON results."""
    device: str = "cuda"
    """Device to run on: cuda, cuda:N or cpu (cpu times only the PyTorch twin)."""
    points: int | None = None
    """Points per call; default 2**20 on CUDA, 2**16 on CPU."""
    num_levels: int = 16
    """Levels L per plane."""
    features_per_level: int = 2
    """Features F per level."""
    log2_table_size: int = 19
    """log2 of the hashed table size T."""
    base_resolution: int = 16
    """Coarsest resolution."""
    max_resolution: int = 2048
    """Finest resolution."""
    dtype: Literal["float32", "float16"] = "float32"
    """Embedding dtype."""
    repeats: int | None = None
    """Timed repetitions (median reported); default 20 on CUDA, 3 on CPU."""
    warmup: int = 2
    """Untimed repetitions first (the first CUDA call also builds the extension)."""
    twin: bool = True
    """Also time the PyTorch twin on the same device (CUDA runs)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median/min wall time of fn in ms (synchronised before and after each call), and the median
    CPU time of this process (all threads) per call, which a busy shared CPU inflates less."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "process_cpu_median_ms": statistics.median(cpu), "repeats": repeats}


def copy_bandwidth(device: torch.device, repeats: int) -> dict:
    """Memory bandwidth from a large device-to-device copy: (read + write bytes) / time."""
    nbytes = 2**30 if device.type == "cuda" else 2**28
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    t = time_ms(lambda: b.copy_(a), device, max(repeats, 3), 2)
    del a, b
    return {"bytes_copied": nbytes, "median_ms": t["median_ms"],
            "gbytes_per_s": 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9}


def floor_bytes(model: TriPlaneHashGrid, n: int, input_gradients: bool) -> int:
    """Least bytes a forward + backward must move (every plane): see the module docstring."""
    total = 0
    for plane in model.planes:
        s = plane.spec
        table = s.total_params * s.features_per_level * plane.embeddings.element_size()
        x_bytes = n * s.dim * 4
        out_bytes = n * s.out_dim * 4
        total += 2 * x_bytes + 2 * out_bytes + 2 * table  # x twice, out + grad_out, table + its grad
        if input_gradients:
            total += x_bytes  # grad_x written
    return total


def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "cuda_ext", "bench"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (res.stdout.strip() + ("+dirty" if dirty else "")) if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def bench_impl(cfg: BenchConfig, impl: str, device: torch.device, n: int, repeats: int) -> dict:
    dtype = getattr(torch, cfg.dtype)
    model = TriPlaneHashGrid(cfg.num_levels, cfg.features_per_level, cfg.log2_table_size,
                             cfg.base_resolution, cfg.max_resolution, implementation=impl,
                             dtype=dtype).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(n, 3, generator=gen, device=device)  # [N, 3]
    v_out = torch.randn(n, model.out_dim, generator=gen, device=device)  # [N, 96]

    def forward():
        with torch.no_grad():
            return model(x)

    def forward_backward(xin: torch.Tensor):
        for p in model.parameters():
            p.grad = None
        model(xin).backward(v_out)

    x_req = x.clone().requires_grad_(True)
    res = {
        "forward": time_ms(forward, device, repeats, cfg.warmup),
        "forward_backward": time_ms(lambda: forward_backward(x), device, repeats, cfg.warmup),
        "forward_backward_input_grad": time_ms(lambda: forward_backward(x_req), device, repeats, cfg.warmup),
    }
    for key in res:
        res[key]["mpoints_per_s"] = n / (res[key]["median_ms"] * 1e-3) / 1e6
    res["floor_bytes"] = floor_bytes(model, n, input_gradients=False)
    if device.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return res


def main(cfg: BenchConfig) -> int:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench/hashgrid.py: CUDA is not available here (torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}); nothing to compare. Use --device cpu to time the PyTorch twin.",
              file=sys.stderr)
        return 1
    if device.type not in ("cuda", "cpu"):
        print(f"bench/hashgrid.py: unsupported device {cfg.device!r} (cuda, cuda:N or cpu)", file=sys.stderr)
        return 2
    n = cfg.points or (2**20 if device.type == "cuda" else 2**16)
    repeats = cfg.repeats or (20 if device.type == "cuda" else 3)
    impls = ["torch"]
    if device.type == "cuda":
        reason = cuda_unavailable_reason()
        if reason:
            print(f"bench/hashgrid.py: the CUDA kernels are unavailable: {reason}", file=sys.stderr)
            return 1
        impls = ["cuda", "torch"] if cfg.twin else ["cuda"]
    bandwidth = copy_bandwidth(device, repeats)
    results = {}
    for impl in impls:
        results[impl] = bench_impl(cfg, impl, device, n, repeats)
        results[impl]["floor_ms"] = results[impl]["floor_bytes"] / (bandwidth["gbytes_per_s"] * 1e9) * 1e3
        fb = results[impl]["forward_backward"]["median_ms"]
        results[impl]["floor_fraction"] = results[impl]["floor_ms"] / fb
        print(f"{impl:5s}: forward {results[impl]['forward']['median_ms']:9.3f} ms, "
              f"forward+backward {fb:9.3f} ms ({n / (fb * 1e-3) / 1e6:.3g} Mpoints/s), "
              f"+input grad {results[impl]['forward_backward_input_grad']['median_ms']:9.3f} ms; "
              f"floor {results[impl]['floor_ms']:.3f} ms ({100 * results[impl]['floor_fraction']:.1f}% of it reached)")
        if device.type == "cpu":
            print("       process CPU time per call: " + ", ".join(
                f"{k} {results[impl][k]['process_cpu_median_ms']:.1f} ms"
                for k in ("forward", "forward_backward", "forward_backward_input_grad")))
    summary = {}
    if "cuda" in results and "torch" in results:
        for key in ("forward", "forward_backward", "forward_backward_input_grad"):
            summary[f"speedup_{key}"] = results["torch"][key]["median_ms"] / results["cuda"][key]["median_ms"]
        print("speedup over the twin: " + ", ".join(f"{k[8:]} {v:.1f}x" for k, v in summary.items()))
    print(f"memory bandwidth (copy): {bandwidth['gbytes_per_s']:.1f} GB/s")
    out = {
        "benchmark": "hashgrid_triplane",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": git_commit(),
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
                   "points": n, "repeats": repeats},
        "bandwidth": bandwidth,
        "results": results,
        **summary,
    }
    write_json(cfg.out, out)
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(BenchConfig)))

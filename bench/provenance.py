"""What every benchmark result records beside its numbers: the commit, the machine, torch, and
the process's peak memory. ``from provenance import provenance, peak_rss_gb`` (bench/ is on the
path of a script run as ``python bench/NAME.py``)."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)


def provenance(device: str = "cpu") -> dict:
    """The commit (short hash, ``+dirty`` when the tree has changes), the device, the CPUs this
    process may use, torch and the platform."""
    import torch

    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    return {"commit": commit + ("+dirty" if dirty else ""), "device": device, "cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "platform": platform.platform()}


def report(result: dict, out: Path | None) -> None:
    """Print ``result`` as one JSON line and, when ``out`` is given, write it there (indented)."""
    import json

    print(json.dumps(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

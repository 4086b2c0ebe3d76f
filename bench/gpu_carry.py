"""Prepare what travels with the one-call GPU check (bench/gpu_check.py) to a bare GPU machine.

    python bench/gpu_carry.py --data D_obama            # -> .carry/ (git-ignored), and the call to make

The GPU machine (Python 3.12, torch with CUDA, no package registry) lacks a few of the project's
packages; they travel as wheels for CPython 3.12 manylinux x86_64, downloaded here, with a wheel
of the project itself and a copy of one preprocessed dataset. Everything that travels (the
tracked tree plus ``.carry/``) must stay within the device tool's 64 MiB; this script checks it,
reports the sizes and prints the device call (BENCHMARKS.md quotes it).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 64 * 2**20
# what the GPU image lacks of the fit/render path (its package list: the device tool's KINDS.md),
# at the versions this checkout was tested with; mediapipe stays behind (LMD is then reported
# unavailable), PyAV reads the dataset's video, tyro is the CLI
WHEELS = ("av==18.1.0", "tyro==1.0.17", "docstring-parser==0.18.0", "typeguard==4.6.1", "gsplat==1.5.3")
DATASET_FILES = ("manifest.json", "frames.mp4", "audio.wav", "tracks.npz", "masks.mkv", "background.png",
                 "features/mel.npy")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def tree_bytes() -> int:
    """Bytes of the files git tracks (what travels besides ignored paths named in carry)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True).stdout
    return sum((REPO / f).stat().st_size for f in files.split("\0") if f and (REPO / f).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def device_command(fit_minutes: float) -> str:
    """The shell command for the device tool's run (with carry [".carry"])."""
    return ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
            ".carry/wheels/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && "
            f"python3 bench/gpu_check.py --out /tmp/check --data .carry/data --fit-minutes {fit_minutes:g}; "
            "cp /tmp/check/gpu_check.md /tmp/check/gpu_check.json $OUT/; "
            "tar czf $OUT/check.tgz --exclude='*.pt' -C /tmp check")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a preprocessed dataset (the 20 s Obama one: 8 MB)")
    ap.add_argument("--dest", type=Path, default=REPO / ".carry")
    ap.add_argument("--fit-minutes", type=float, default=3.0)
    args = ap.parse_args()

    dest = args.dest
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "wheels").mkdir(parents=True)
    for rel in DATASET_FILES:
        src = args.data / rel
        if not src.is_file():
            print(f"gpu_carry: {src} is missing: preprocess the dataset first", file=sys.stderr)
            return 2
        (dest / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / "data" / rel)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest / "wheels"),
                    *WHEELS], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(dest / "wheels"), str(REPO)], check=True)
    sizes = {"tree": tree_bytes(), "wheels": folder_bytes(dest / "wheels"), "data": folder_bytes(dest / "data")}
    total = sum(sizes.values())
    for name, n in sizes.items():
        print(f"gpu_carry: {name:6s} {n / 2**20:6.1f} MiB")
    print(f"gpu_carry: total  {total / 2**20:6.1f} MiB of {LIMIT_BYTES / 2**20:.0f} MiB "
          f"({'fits' if total <= LIMIT_BYTES else 'TOO LARGE'}); wheels: "
          + ", ".join(sorted(p.name for p in (dest / "wheels").iterdir())))
    print(f"device run: carry [\".carry\"], timeout_s 600, command:\n{device_command(args.fit_minutes)}")
    return 0 if total <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())

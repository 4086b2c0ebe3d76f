"""The baked avatar in a browser: file size, load time and the page's time a frame.

    python bench/web_load.py RUN [RUN ...] [--frames 100] [--draws 50] [--out bench/results/web_load.json]

For each run (Gaussian field, motion-only): ``avatar3d export-web RUN`` into a temp folder (its
bytes, by part, and the seconds the bake took here); then a bare page in headless Chromium
(SwiftShader WebGL2: a CPU, not a GPU) that loads the file over HTTP from a local server with
``viewer/static/splat.js`` (the viewer's own loader and renderer) and draws the file's own loop
frames at the window's resolution: load = request -> parsed and set up (ms), first frame = + the
first draw on screen, then the median ms of ``--draws`` further draws (each forced to finish by
reading a pixel back) and their parts. JSON to --out (and stdout); BENCHMARKS.md has the table.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import peak_rss_gb, provenance, report  # noqa: E402

STATIC = Path(__file__).resolve().parents[1] / "viewer" / "static"

PAGE = """<!doctype html><meta charset="utf-8"><body><script src="/splat.js"></script><script>
window.result = null;
(async () => {
  try {
    const t0 = performance.now();
    const avatar = await A3DW.load("/avatar.a3dw");
    const t1 = performance.now();
    const h = avatar.header, F = h.frames.index.length, size = h.window.size;
    const frame = (j) => ({ base: j, code: h.frames.code[j], R: h.frames.R[j].flat(), t: h.frames.t[j],
                            crop: [0, 0, h.frame_size], head: [h.window.x0, h.window.y0, h.window.side, size],
                            resolution: h.frame_size });
    const px = new Uint8Array(4), finish = () => avatar.gl.readPixels(0, 0, 1, 1, avatar.gl.RGBA, avatar.gl.UNSIGNED_BYTE, px);
    await avatar.draw(frame(0)); finish();
    const t2 = performance.now();
    const ms = [], parts = [];
    for (let i = 1; i <= DRAWS; i++) {
      const j = i % F;
      await avatar.base(j);  // decoding a base is not drawing
      const s = performance.now();
      await avatar.draw(frame(j)); finish();
      ms.push(performance.now() - s); parts.push({ ...avatar.stats });
    }
    window.result = { bytes: avatar.bytes, load_ms: t1 - t0, first_frame_ms: t2 - t0, draw_ms: ms, parts,
                      half_float: avatar.halfFloat, gaussians: avatar.N + avatar.M, renderer: avatar.gl.getParameter(avatar.gl.RENDERER) };
  } catch (e) { window.result = { error: String(e && e.message || e) }; }
})();
</script>"""


def serve(pack: Path, draws: int):
    """A local HTTP server for the page (``draws`` timed draws), splat.js and the file, in a
    thread; returns (url, stop)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/", lambda r: web.Response(text=PAGE.replace("DRAWS", str(draws)), content_type="text/html"))
    app.router.add_get("/splat.js", lambda r: web.FileResponse(STATIC / "splat.js"))
    app.router.add_get("/avatar.a3dw", lambda r: web.FileResponse(pack))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return f"http://127.0.0.1:{port}/", stop


def measure(run: Path, tmp: Path, frames: int, draws: int) -> dict:
    from avatar3d.gaussian.webpack import ExportWebConfig, read_pack, run_export_web
    from avatar3d.viewer.browser import chromium

    out = tmp / f"{run.name}.a3dw"
    exported = run_export_web(ExportWebConfig(run=run, output=out, frames=frames, device="cpu"))
    table = read_pack(out)
    parts = {}
    for name, a in table.arrays.items():
        key = ("frames" if name.startswith("frames.") else "terms" if name.startswith("face.terms")
               else "residual" if name.startswith(("face.residual", "residual.")) else name.split(".")[0])
        parts[key] = parts.get(key, 0) + a.nbytes
    url, stop = serve(out, draws)
    try:
        with chromium() as driver:
            driver.get(url)
            deadline = time.monotonic() + 300
            result = None
            while time.monotonic() < deadline and result is None:
                time.sleep(0.5)
                result = driver.execute_script("return window.result")
    finally:
        stop()
    if result is None or "error" in result:
        raise SystemExit(f"bench/web_load.py: the page failed on {run}: {result}")
    ms = np.array(result["draw_ms"])
    parts_ms = {k: round(float(np.median([p[k] for p in result["parts"]])), 2)
                for k in ("deform_ms", "project_ms", "sort_ms", "gl_ms")}
    return {
        "run": str(run), "num_face": exported["num_face"], "num_mouth": exported["num_mouth"],
        "frames": exported["frames"], "export_seconds": exported["seconds"], "bytes": exported["bytes"],
        "mb": round(exported["bytes"] / 1e6, 2), "bytes_by_part": parts, "kept": exported["kept"],
        "window_size": table.header["window"]["size"], "frame_size": table.header["frame_size"],
        "load_ms": round(result["load_ms"], 1), "first_frame_ms": round(result["first_frame_ms"], 1),
        "draw_ms_p50": round(float(np.median(ms)), 1), "draw_ms_p95": round(float(np.percentile(ms, 95)), 1),
        "draw_parts_ms_p50": parts_ms, "half_float": result["half_float"], "renderer": result["renderer"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--frames", type=int, default=100, help="base frames in each file (export-web's --frames)")
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from avatar3d.viewer.browser import browser_unavailable_reason

    reason = browser_unavailable_reason()
    if reason:
        raise SystemExit(f"bench/web_load.py: {reason}")
    result = {"bench": "web_load", **provenance("cpu"), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            r = measure(run, Path(tmp), args.frames, args.draws)
            print(r, file=sys.stderr)
            result["runs"].append(r)
    result["peak_rss_gb"] = peak_rss_gb()
    report(result, args.out)


if __name__ == "__main__":
    main()

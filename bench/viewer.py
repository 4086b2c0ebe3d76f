"""The live viewer's numbers: mic-to-mouth latency, frames per second delivered, file-mode drift.

    python bench/viewer.py RUN_TINY [--small RUN_SMALL] [--out bench/results/viewer.json]

1. **Latency** (headless Chromium, ``avatar3d view RUN_TINY`` in a child process): a wav of real
   speech bursts (1.5 s of ../shared/data/audio each) between 1.2 s silences is the fake
   microphone. For each burst, the page measures from the AudioWorklet's time of the onset
   sample to the display of the first frame whose jawOpen passes a threshold (halfway from the
   prior's rest to the 95th percentile of the offline prior's jaw on the same wav). That mouth
   latency = the code delay (when, relative to the onset, the prior's own output first passes the
   threshold: computed here offline on the wav) + the frame latency, which the page measures for
   every frame (its first audio sample reaching the worklet -> on screen) with its budget: the
   frame's own audio and the prior's look-ahead (120 ms by construction), server + network (of
   which the server's draw + JPEG), decode + display; and the prior's cost per 20 ms chunk here.
2. **Frames per second delivered** (a Python WebSocket client, no browser): 20 ms chunks of speech
   sent at real-time pace for ``--fps-seconds``; pictures received per second (at most 25: one
   per 40 ms of audio), the server's own draw + JPEG time per frame, and the time from sending
   the chunk that makes a frame's code final to receiving the frame (the server + network part of
   the latency; add 120 ms of audio for the frame latency), at 128², 256², 512², for each avatar
   given. This part needs no browser (``--skip latency drift``: the GPU check runs it so).
   With ``--render browser`` the page draws the baked avatar itself (the viewer's browser render
   mode): the server + network part then carries motion codes only, and decode + display is the
   page's own drawing; the page's numbers (file size, load time, ms a frame, frames drawn a
   second) are reported under ``browser``. The fps part always measures the server's pictures.
3. **Drift** (headless Chromium, file mode): a ``--drift-minutes`` wav chosen in the page's file
   picker plays to the end; the page logs every 10 s the median, over its last 250 frames, of
   (audio clock at display - the frame's audio time). Reported: the first and last minute's logs.

JSON to --out (and stdout); BENCHMARKS.md has the table. Writes its wavs to a temp folder only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import peak_rss_gb, provenance, report  # noqa: E402

SPEECH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"
LOOKAHEAD_FRAMES = 2  # the prior's (the server's ready message says so too)


def speech_pool(files: list[Path] | None = None) -> np.ndarray:
    """The given speech files (default: all of ../shared/data/audio) back to back, 16 kHz. [S]"""
    from avatar3d.audio.features import load_audio

    files = files or sorted(SPEECH_DIR.glob("*.wav"))
    if not files:
        raise SystemExit(f"no speech wavs in {SPEECH_DIR} (give --speech)")
    return np.concatenate([load_audio(f) for f in files]).astype(np.float32)


def bursts(pool: np.ndarray, n: int, speech_s: float = 1.5, silence_s: float = 1.2, offset_s: float = 5.0):
    """``n`` bursts of speech from ``pool`` between silences: the wav [S] and onset times (s)."""
    parts, onsets, t = [np.zeros(int(silence_s * 16000), np.float32)], [], silence_s
    for i in range(n):
        start = int((offset_s + i * 7.3) * 16000) % (len(pool) - int(speech_s * 16000))
        seg = pool[start : start + int(speech_s * 16000)]
        parts += [seg / max(1e-6, np.abs(seg).max()) * 0.7, np.zeros(int(silence_s * 16000), np.float32)]
        onsets.append(t)
        t += speech_s + silence_s
    return np.concatenate(parts), onsets


def write_wav(path: Path, audio: np.ndarray) -> Path:
    import soundfile as sf

    sf.write(str(path), audio, 16000, subtype="PCM_16")
    return path


def offline_jaw(run: Path, audio: np.ndarray) -> tuple[np.ndarray, float]:
    """The run's prior on the whole wav, offline: jawOpen per frame [N] and its rest value."""
    from avatar3d.audio.prior import predict_motion_from_audio
    from avatar3d.drive.render import fit_audio, load_run_prior, num_output_frames

    prior, _ = load_run_prior(run, "cpu")
    jaw = predict_motion_from_audio(prior, fit_audio(audio, num_output_frames(len(audio))))[:, 0]
    return jaw, float(prior.rest[0])


def code_delays_ms(jaw: np.ndarray, threshold: float, onsets: list[float]) -> list[float]:
    """Per burst onset (s): the start of the first frame the page would count (one that ends after
    the onset, jaw past ``threshold``) minus the onset, in ms: the prior's own share of the mouth
    latency (negative: its look-ahead opens the mouth before the sound)."""
    out = []
    for onset in onsets:
        k = next((k for k in range(len(jaw)) if (k + 1) * 0.04 > onset and jaw[k] >= threshold), None)
        if k is not None:
            out.append(round((k * 0.04 - onset) * 1000, 1))
    return out


def prior_cost_ms(run: Path, audio: np.ndarray) -> float:
    """Mean cost of the streaming prior per 20 ms chunk (ms)."""
    from avatar3d.audio.prior import PriorStream
    from avatar3d.drive.render import load_run_prior

    prior, _ = load_run_prior(run, "cpu")
    stream = PriorStream(prior)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, min(len(audio), 16000 * 10), 320):
        stream.push(audio[i : i + 320])
        n += 1
    return (time.perf_counter() - t0) / n * 1e3


def browser_numbers(s: dict, seconds: float) -> dict | None:
    """What the page reports of its own drawing in browser render mode (None in server mode)."""
    if s["render"] != "browser":
        return None
    b = {k: v for k, v in s["browser"].items() if k != "shown_draw"}
    return {**b, "frames_drawn_per_s": round(s["frames_drawn"] / seconds, 2)}


def latency(run: Path, pool: np.ndarray, tmp: Path, resolution: int, n_bursts: int, threads: int = 0,
            render: str = "server") -> dict:
    from avatar3d.viewer.browser import chromium, viewer_server, wait_for

    audio, onsets = bursts(pool, n_bursts)
    wav = write_wav(tmp / "bursts.wav", audio)
    jaw, rest = offline_jaw(run, audio)
    threshold = rest + 0.5 * (float(np.percentile(jaw, 95)) - rest)
    delays = code_delays_ms(jaw, threshold, onsets)
    with viewer_server(run, "--threads", str(threads)) as url, chromium(wav) as driver:
        driver.get(f"{url}?mode=mic&res={resolution}&jaw={threshold:.4f}&render={render}")
        need = int(len(audio) / 16000 * 25) - 10
        s = wait_for(driver, lambda s: s["frames"] >= need, len(audio) / 16000 + 60, "the whole wav")
    lat = np.array(s["mouth_latency_ms"], float)
    if s["render"] != render:
        raise SystemExit(f"bench/viewer.py: the page drew with {s['render']!r}, not {render!r}: {s['errors']}")
    return {
        "render": render, "browser": browser_numbers(s, len(audio) / 16000),
        "resolution": resolution, "bursts": n_bursts, "onsets_seen": s["onsets"], "jaw_threshold": round(threshold, 4),
        "jaw_rest": round(rest, 4), "mouth_latency_ms": lat.tolist(),
        "mouth_latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
        "mouth_latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else None,
        "code_delay_ms": delays, "code_delay_ms_p50": float(np.median(delays)) if delays else None,
        "frame_latency_ms_p50": s["latency_ms_p50"], "frame_latency_ms_p95": s["latency_ms_p95"],
        "budget_ms_p50": {"audio_of_frame_and_lookahead": 120.0, **s["budget"]},
        "prior_ms_per_20ms_chunk": round(prior_cost_ms(run, audio), 3),
        "frames": s["frames"], "frames_drawn": s["frames_drawn"], "dropped": s["dropped"],
    }


async def _fps(url: str, audio: np.ndarray, resolution: int, seconds: float) -> dict:
    import aiohttp

    from avatar3d.viewer import protocol as P

    ws_url = url.split("?")[0].replace("http://", "ws://") + "ws"
    got, render, waits = [], [], []
    sent: dict[int, float] = {}  # chunk index -> when it was sent
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=1 << 24) as ws:

        async def receive():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    now = time.perf_counter()
                    head, jpeg = P.read_frame_message(msg.data)
                    if jpeg:
                        got.append(now)
                        render.append(head["render_ms"])
                        last = 2 * (head["k"] + 1 + LOOKAHEAD_FRAMES) - 1  # the chunk that makes its code final
                        if last in sent:
                            waits.append((now - sent[last]) * 1e3)

        reader = asyncio.create_task(receive())
        await ws.send_str(json.dumps({"type": "control", "resolution": resolution}))
        await ws.send_str('{"type": "start", "mode": "mic"}')
        t0 = time.perf_counter()
        n = int(seconds * 50)
        for i in range(n):
            chunk = audio[(i * 320) % (len(audio) - 320):][:320]
            await ws.send_bytes((chunk * 32767).astype("<i2").tobytes())
            sent[i] = time.perf_counter()
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.perf_counter()))
        await asyncio.sleep(0.5)
        reader.cancel()
    span = seconds
    return {"resolution": resolution, "seconds": seconds, "pictures": len(got),
            "fps_delivered": round(len(got) / span, 2), "render_ms_p50": float(np.median(render)) if render else None,
            "server_fps_max": round(1000 / float(np.median(render)), 1) if render else None,
            # last needed chunk sent -> frame received: the server + network part of the latency
            "server_network_ms_p50": round(float(np.median(waits)), 1) if waits else None,
            "server_network_ms_p95": round(float(np.percentile(waits, 95)), 1) if waits else None}


def fps(run: Path, audio: np.ndarray, seconds: float, threads: int = 0, device: str = "auto") -> list[dict]:
    from avatar3d.viewer.browser import viewer_server

    out = []
    with viewer_server(run, "--threads", str(threads), "--device", device) as url:
        for res in (128, 256, 512):
            out.append(asyncio.run(_fps(url, audio, res, seconds)))
            print(f"  {run.name} {res}²: {out[-1]}", file=sys.stderr)
    return out


def drift(run: Path, pool: np.ndarray, tmp: Path, minutes: float, resolution: int, render: str = "server") -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from avatar3d.viewer.browser import chromium, viewer_server, wait_for

    n = int(minutes * 60 * 16000)
    audio = np.concatenate([pool, np.zeros(16000, np.float32)])
    wav = write_wav(tmp / "long.wav", np.tile(audio, n // len(audio) + 1)[:n] * 0.8)
    with viewer_server(run) as url, chromium() as driver:
        driver.get(f"{url}?mode=file&autostart=0&res={resolution}&render={render}")
        wait_for(driver, lambda s: s["state"] == "ready", 60, "the page")
        Select(driver.find_element(By.ID, "file-source")).select_by_value("pick")
        driver.find_element(By.ID, "file-input").send_keys(str(wav))
        s = wait_for(driver, lambda s: s["state"] == "done", minutes * 60 + 120, "the long file to end", every=5)
    log = s["drift_log"]  # [[seconds, median drift ms of the last 250 frames], ...]
    first = [d for t, d in log if t <= 60 and d is not None]
    last = [d for t, d in log if t >= minutes * 60 - 60 and d is not None]
    return {"render": render, "browser": browser_numbers(s, minutes * 60), "minutes": minutes,
            "resolution": resolution, "log": log, "frames": s["frames"],
            "frames_drawn": s["frames_drawn"], "drift_ms_first_minute": first, "drift_ms_last_minute": last,
            "drift_growth_ms": round(float(np.median(last) - np.median(first)), 1) if first and last else None,
            "drift_ms_p95_last_250": s["drift_ms_p95"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tiny", type=Path, help="RUN of the tiny avatar")
    ap.add_argument("--small", type=Path, help="RUN of the small avatar (fps only)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--resolution", type=int, default=128, help="output size for the latency and drift runs")
    ap.add_argument("--bursts", type=int, default=8)
    ap.add_argument("--render", choices=["server", "browser"], default="server",
                    help="who draws the frames in the latency and drift runs (the page's render mode)")
    ap.add_argument("--fps-seconds", type=float, default=8.0)
    ap.add_argument("--drift-minutes", type=float, default=10.0, help="0 = skip the drift run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["latency", "fps", "drift"])
    ap.add_argument("--threads", type=int, default=0, help="the server's --threads (0 = PyTorch's default)")
    ap.add_argument("--device", default="auto", help="the server's --device (fps part)")
    ap.add_argument("--speech", type=Path, nargs="*", help="speech wavs (default: ../shared/data/audio/*.wav)")
    args = ap.parse_args()

    from avatar3d.viewer.browser import browser_unavailable_reason

    reason = browser_unavailable_reason()
    if reason and ("latency" not in args.skip or "drift" not in args.skip):
        raise SystemExit(f"bench/viewer.py: {reason}")
    pool = speech_pool(args.speech)
    import torch

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    result = {"bench": "viewer", **provenance(device), "server_threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "latency" not in args.skip:
            result["latency"] = latency(args.tiny, pool, tmp, args.resolution, args.bursts, args.threads,
                                        args.render)
            print(f"latency: {result['latency']}", file=sys.stderr)
        if "fps" not in args.skip:
            result["fps"] = {"tiny": fps(args.tiny, pool, args.fps_seconds, args.threads, args.device)}
            if args.small:
                result["fps"]["small"] = fps(args.small, pool, args.fps_seconds, args.threads, args.device)
        if "drift" not in args.skip and args.drift_minutes > 0:
            result["drift"] = drift(args.tiny, pool, tmp, args.drift_minutes, args.resolution, args.render)
    result["runs"] = {"tiny": str(args.tiny), "small": str(args.small) if args.small else None}
    result["peak_rss_gb"] = peak_rss_gb()
    report(result, args.out)


if __name__ == "__main__":
    main()

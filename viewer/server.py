"""``avatar3d view RUN``: the live viewer, a local web server and the page it serves.

One aiohttp server: the page and its scripts from ``viewer/static`` (shipped in the package, no
CDN), ``/api/info`` and ``/api/audio/dataset`` (the run's own clip audio for file mode), and
``/ws``, one WebSocket per tab carrying audio up and frames down (``viewer/PROTOCOL.md``).

Each connection is a :class:`Connection` around its own
:class:`avatar3d.viewer.session.ViewerSession`; the avatar, scene and prior are one
:class:`ViewerModel` shared by all. Work per connection is three tasks: the reader checks
every message (:mod:`avatar3d.viewer.protocol`) and queues audio and controls in order (a bounded
queue: a client that sends faster than the server draws is held back by TCP, not buffered); the
worker feeds them to the session on the one drawing thread, drawing the newest due frame of what
arrived meanwhile (20 ms chunks finish at most one frame each, so a server that keeps up draws
every frame; one that falls behind skips frames instead of lagging); the sender drains an outbox
of at most 8 frames, dropping the oldest for a client that reads too slowly.
"""
from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import secrets
import sys
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import tyro
from aiohttp import WSMsgType, web

from avatar3d.errors import UserError
from avatar3d.viewer import protocol as P

STATIC = Path(__file__).resolve().parent / "static"
AUDIO_QUEUE = 256  # messages (audio chunks and controls) waiting for one session's worker


@dataclass(frozen=True)
class ViewConfig:
    """Serve the live viewer of a fitted avatar: microphone or an audio file in, frames out."""

    run: tyro.conf.Positional[Path]
    """Run folder (from `avatar3d fit`)."""
    host: str = "127.0.0.1"
    """Address to bind. Anything but loopback needs a token (generated unless --token is given)."""
    port: int = 8765
    """Port to listen on (0 = any free port)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device to render on; auto = cuda when available, else cpu."""
    token: str | None = None
    """Token clients must present (?token=...). Default: none on loopback, a random one elsewhere."""
    max_sessions: int = 4
    """Concurrent viewer sessions (tabs) served; one more gets a clear error."""
    idle_frames: int = 250
    """Training frames the idle head motion walks back and forth over (and whose torsos are kept decoded)."""
    jpeg_quality: int = 85
    """JPEG quality of the frames sent (1-100)."""
    threads: int = 0
    """CPU threads PyTorch draws with (0 = PyTorch's default: one per core)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerState:
    """What the app's handlers share."""

    model: object  # ViewerModel
    token: str | None
    max_sessions: int
    executor: ThreadPoolExecutor  # the one drawing thread
    sessions: set  # the open Connections


STATE = web.AppKey("avatar3d_view_state", ServerState)


class Outbox:
    """Messages to one client, sent in order by one task. At most ``max_frames`` frames wait;
    past that the oldest waiting frame is dropped (and counted). Text messages are never dropped."""

    def __init__(self, ws, max_frames: int = P.MAX_FRAME_QUEUE):
        self.ws, self.max_frames = ws, max_frames
        self.items: deque[tuple[str, object]] = deque()
        self.dropped = 0
        self.wake = asyncio.Event()

    def text(self, obj: dict) -> None:
        self.items.append(("text", obj))
        self.wake.set()

    def frame(self, frame) -> None:
        frames = [i for i, (kind, _) in enumerate(self.items) if kind == "frame"]
        if len(frames) >= self.max_frames:
            del self.items[frames[0]]
            self.dropped += 1
        self.items.append(("frame", frame))
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.items:
                kind, obj = self.items.popleft()
                if kind == "text":
                    await self.ws.send_json(obj)
                else:
                    await self.ws.send_bytes(P.frame_message(obj.header(self.dropped), obj.jpeg))


class Connection:
    """One tab's session and the two tasks that serve it (see module docstring)."""

    def __init__(self, state: ServerState, ws):
        from avatar3d.viewer.session import ViewerSession

        self.state, self.ws = state, ws
        self.session = ViewerSession(state.model)
        self.outbox = Outbox(ws)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=AUDIO_QUEUE)  # ("audio"|"end"|"call", payload)
        self.streaming = False  # between start and end, as the reader has seen them
        self.tasks = [asyncio.create_task(self.outbox.run()), asyncio.create_task(self._work())]

    async def receive(self, msg) -> None:
        """Check one client message and queue what it asks (ProtocolError on a bad one)."""
        if msg.type == WSMsgType.BINARY:
            if not self.streaming:
                raise P.ProtocolError('audio before start (send {"type": "start", "mode": ...} first)')
            await self.queue.put(("audio", P.parse_audio(msg.data)))
            return
        m = P.parse_text(msg.data, self.state.model.expressions, self.state.model.resolutions)
        if isinstance(m, P.Ping):
            self.outbox.text({"type": "pong", "t": m.t})
        elif isinstance(m, P.Start):
            self.streaming = True
            await self.queue.put(("call", lambda: self.session.start(m.mode)))
        elif isinstance(m, P.End):
            if not self.streaming:
                raise P.ProtocolError("end before start")
            self.streaming = False
            await self.queue.put(("end", None))
        elif isinstance(m, P.Control):
            if m.render == "browser" and self.state.model.browser_unavailable:
                raise P.ProtocolError(f"render 'browser' is not available: {self.state.model.browser_unavailable}")
            await self.queue.put(("call", lambda: self.session.control(m)))

    async def _work(self) -> None:
        """Feed the session its audio and controls in order, drawing on the drawing thread. What
        piled up meanwhile is taken at once: consecutive audio chunks go to the session together,
        so a stream that fell behind draws only its newest frame. A failed draw is reported to
        the client (and logged) and the stream goes on."""
        import itertools

        import numpy as np

        loop = asyncio.get_running_loop()
        session, outbox = self.session, self.outbox
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            for kind, group in itertools.groupby(items, key=lambda item: item[0]):
                payloads = [p for _, p in group]
                try:
                    if kind == "audio":
                        audio = np.concatenate(payloads)
                        frames = await loop.run_in_executor(self.state.executor, session.push, audio, "newest")
                    elif kind == "end":
                        frames = await loop.run_in_executor(self.state.executor, session.end, "all")
                    else:  # start / control: cheap, ordered with the audio
                        for call in payloads:
                            call()
                        continue
                except Exception as exc:  # noqa: BLE001 - one bad draw must not end the session
                    traceback.print_exc(file=sys.stderr)
                    outbox.text(P.error_message(f"server error: {exc!r}"))
                    continue
                for f in frames:
                    outbox.frame(f)
                if kind == "end":
                    outbox.text({"type": "ended", "frames": session.frames_out})

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def ws_handler(request):
    state: ServerState = request.app[STATE]
    # aiohttp closes a connection past max_msg_size (1009) itself; below that, our own limits
    # answer with an error and keep the session.
    ws = web.WebSocketResponse(max_msg_size=1 << 20, heartbeat=30.0)
    await ws.prepare(request)
    if len(state.sessions) >= state.max_sessions:
        await ws.send_json(P.error_message(
            f"server is full: {state.max_sessions} sessions are open (avatar3d view --max-sessions)", fatal=True))
        await ws.close(code=1013, message=b"server full")
        return ws
    conn = Connection(state, ws)
    state.sessions.add(conn)
    try:
        conn.outbox.text({"type": "ready", "session": id(conn) & 0xFFFFFF, "resolution": conn.session.view.resolution,
                          **state.model.ready()})
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            try:
                await conn.receive(msg)
            except P.ProtocolError as exc:
                conn.outbox.text(P.error_message(str(exc)))
    finally:
        state.sessions.discard(conn)
        try:
            await conn.close()
        finally:  # also when aiohttp cancels this handler meanwhile
            del conn
            gc.collect()
            _free_device_memory(state.model)
    return ws


def _free_device_memory(model) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.empty_cache()


def make_app(model, token: str | None = None, max_sessions: int = 4):
    """The aiohttp application serving ``model`` (a ViewerModel)."""
    @web.middleware
    async def guard(request, handler):
        if request.path == "/ws" or request.path.startswith("/api/"):
            if token is not None and not hmac.compare_digest(request.query.get("token", ""), token):
                raise web.HTTPForbidden(text="missing or wrong token (open the URL avatar3d view printed)")
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.host:
                raise web.HTTPForbidden(text=f"origin {origin} is not this server's")
        return await handler(request)

    async def index(request):
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(request):
        return web.json_response({"type": "info", **model.ready(), "sessions": len(request.app[STATE].sessions),
                                  "max_sessions": max_sessions})

    async def dataset_audio(request):
        from avatar3d.core.dataset import DatasetPaths

        path = DatasetPaths(model.scene.data_dir).audio
        if not path.is_file():
            raise web.HTTPNotFound(text="the run's dataset has no audio")
        return web.FileResponse(path, headers={"Content-Type": "audio/wav"})

    pack_lock = asyncio.Lock()

    async def web_pack(request):
        """The baked avatar for browser render mode (baked on the drawing thread on first use)."""
        async with pack_lock:
            try:
                path = await asyncio.get_running_loop().run_in_executor(request.app[STATE].executor, model.web_pack)
            except UserError as exc:
                raise web.HTTPNotFound(text=str(exc)) from None
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-cache"})

    app = web.Application(middlewares=[guard], client_max_size=1 << 20)
    app[STATE] = ServerState(model, token, max_sessions, ThreadPoolExecutor(1, thread_name_prefix="draw"), set())
    app.router.add_get("/", index)
    app.router.add_get("/api/info", info)
    app.router.add_get("/api/audio/dataset", dataset_audio)
    app.router.add_get("/api/avatar.a3dw", web_pack)
    app.router.add_get("/ws", ws_handler)
    app.router.add_static("/static/", STATIC)

    async def shutdown(app):
        app[STATE].executor.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app


def server_token(host: str, token: str | None) -> str | None:
    """The token the server asks for: the given one, else a random one off loopback, else none."""
    if token is not None:
        if len(token) < 8:
            raise UserError("--token must be at least 8 characters")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(16)


def run_view(config: ViewConfig) -> None:
    from avatar3d.device import resolve_device
    from avatar3d.viewer.session import ViewerModel

    if config.max_sessions < 1:
        raise UserError(f"--max-sessions must be >= 1, got {config.max_sessions}")
    if not 1 <= config.jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in [1, 100], got {config.jpeg_quality}")
    token = server_token(config.host, config.token)
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    model = ViewerModel(config.run, resolve_device(config.device), config.idle_frames, config.jpeg_quality)
    app = make_app(model, token, config.max_sessions)

    async def serve():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise UserError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        port = runner.addresses[0][1]
        shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        shown = f"[{shown}]" if ":" in shown else shown
        url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        print(f"avatar3d view: {model.run.name} ({model.field}, {model.device}) at {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())

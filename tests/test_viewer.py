"""`avatar3d view`: the session (PCM in -> motion codes and frames out, as offline), the protocol
(every bad message answered with an error while another client keeps being served, the session
cap, the token and Origin checks). The page in a real browser: tests/test_viewer_browser.py."""
from __future__ import annotations

import asyncio
import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.errors import UserError
from synth_dataset import make_tiny_run, speechy_audio

aiohttp = pytest.importorskip("aiohttp")

from aiohttp.test_utils import TestServer  # noqa: E402

from avatar3d.viewer import protocol as P  # noqa: E402
from avatar3d.viewer.server import STATE, make_app, server_token  # noqa: E402
from avatar3d.viewer.session import ViewerModel, ViewerSession  # noqa: E402

PRIOR_TOLERANCE = 1e-4  # streaming vs offline prior (float rounding of the incremental net)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def model(run_dir) -> ViewerModel:
    return ViewerModel(run_dir, torch.device("cpu"))


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _stream(session: ViewerSession, audio: np.ndarray, chunk: int = 320, draw: str = "all"):
    frames = []
    for i in range(0, len(audio), chunk):
        frames += session.push(audio[i : i + chunk], draw)
    return frames + session.end(draw)


# ---------------------------------------------------------------------------------------------
# Session


def test_session_codes_equal_offline_prior(model):
    from avatar3d.audio.prior import predict_motion_from_audio
    from avatar3d.drive.render import fit_audio, num_output_frames

    audio = speechy_audio(3.0, seed=3)
    audio = np.frombuffer(_pcm16(audio), "<i2").astype(np.float32) / 32768  # what the wire carries
    n = num_output_frames(len(audio))
    offline = predict_motion_from_audio(model.prior, fit_audio(audio, n))  # [n, 28]
    session = ViewerSession(model)
    session.start("mic")
    frames = _stream(session, audio, draw="newest")
    assert [f.k for f in frames] == list(range(n))
    codes = np.stack([f.motion for f in frames])
    np.testing.assert_allclose(codes, offline, atol=PRIOR_TOLERANCE, rtol=0)
    drawn = [f for f in frames if f.jpeg]
    assert drawn and drawn[-1].k == n - 1  # the newest frame of every push is drawn
    assert all(f.width == f.height == session.view.resolution for f in drawn)


def test_session_silence_shuts_the_mouth(model):
    session = ViewerSession(model)
    session.start("mic")
    frames = _stream(session, np.zeros(16000, np.float32), draw="none")
    jaw = np.array([f.motion[0] for f in frames])
    rest = model.prior.rest.numpy()[0]
    np.testing.assert_allclose(jaw, rest, atol=1e-6)  # the prior's gate is shut: its rest pose
    assert rest < 0.1
    loud = ViewerSession(model)
    loud.start("mic")
    spoken = np.array([f.motion[0] for f in _stream(loud, speechy_audio(2.0, seed=1), draw="none")])
    assert spoken.max() > rest + 0.02  # and speech opens it


def test_session_frame_is_the_offline_render_frame(model):
    """At the dataset's size, zoom 1, no turn and no sliders, the viewer draws the offline
    render's frame of the same motion code, pixel for pixel."""
    from avatar3d.drive.render import Driven, render_frames
    from avatar3d.audio.prior import blendshapes_from_motion

    session = ViewerSession(model)
    assert session.view.resolution == model.scene.frame_size
    codes = np.random.default_rng(0).uniform(0, 0.5, (5, 28)).astype(np.float32)
    ours = [model.draw(k, codes[k], session.view) for k in range(5)]
    traj = np.array([model.trajectory_frame(k, True) for k in range(5)])
    driven = Driven(traj, torch.from_numpy(blendshapes_from_motion(codes, base=model.scene.motion[traj].numpy())), None)
    theirs = list(render_frames(model.avatar, model.scene, driven, model.bases, model.device))
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_session_view_controls(model):
    session = ViewerSession(model)
    base = model.draw(0, np.zeros(28, np.float32), session.view)
    session.control(P.Control(resolution=128, yaw=1e3, zoom=9.0, expression={"blink": 1.0}))
    v = session.view
    assert (v.resolution, v.yaw, v.zoom) == (128, model.yaw_limit, model.zoom_limit)  # clamped to what it can show
    img = model.draw(0, np.zeros(28, np.float32), v)
    assert img.shape == (128, 128, 3)
    bs = model.blendshapes(np.zeros(28, np.float32), model.trajectory_frame(0, True), v.expression)
    from avatar3d.core.vocab import blendshape_index

    assert float(bs[0, blendshape_index("eyeBlinkLeft")]) == 1.0
    assert base.shape == (model.scene.frame_size,) * 2 + (3,)
    session.control(P.Control(idle_motion=False))
    assert {model.trajectory_frame(k, False) for k in range(10)} == {int(model.loop[0])}
    assert len({model.trajectory_frame(k, True) for k in range(10)}) > 1
    # the frames say when the view turns the head further than the training frames were
    from avatar3d.viewer.session import turned

    R0 = model.scene.R[int(model.loop[0])]
    assert not model.beyond_training(R0)  # a training pose
    assert model.beyond_training(turned(R0, float(model.pose_range.spread[1]) * 2 + 5, 0.0))
    session.control(P.Control(yaw=0.0, pitch=0.0))
    session.start("mic")
    frames = session.push(np.zeros(640 * 3, np.float32), draw="all")
    assert frames and all(f.header()["beyond_training"] is False for f in frames)


def test_browser_render_mode_frames_carry_what_the_page_draws(model):
    """In browser render mode a frame has no picture but the draw parameters, and the server's own
    picture of those parameters is the picture server mode sends for the frame."""
    from avatar3d.viewer.session import FrameParams

    codes = np.random.default_rng(1).uniform(0, 0.5, (4, 28)).astype(np.float32)
    served, browser = ViewerSession(model), ViewerSession(model)
    for s in (served, browser):
        s.control(P.Control(yaw=5.0, zoom=1.5, expression={"blink": 0.5}))
    browser.control(P.Control(render="browser"))
    a, b = served._frames(codes, "newest"), browser._frames(codes, "newest")
    assert [f.draw is None for f in b] == [True, True, True, False]  # only the newest, as pictures
    assert not b[-1].jpeg and b[-1].header()["width"] == 0 and "draw" in b[-1].header()
    params = FrameParams.from_json(json.loads(json.dumps(b[-1].header()["draw"])))  # through the wire
    assert params.base == model.trajectory_position(3, True) and params.code.shape == (52,)
    ours = model.draw_params(params)
    theirs = model.draw(3, codes[3], served.view)
    assert ours.shape == theirs.shape == (model.scene.frame_size,) * 2 + (3,)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2  # the wire rounds the code and pose
    assert a[-1].jpeg and a[-1].draw is None


def test_web_pack_is_baked_once_for_the_loop(model, tmp_path):
    from avatar3d.gaussian.webpack import read_pack

    path = model.web_pack()
    pack = read_pack(path)
    assert pack.header["frames"]["index"] == [int(i) for i in model.loop]
    assert pack.header["num_face"] == model.avatar.num_face()
    stamp = path.stat().st_mtime_ns
    assert model.web_pack() == path and path.stat().st_mtime_ns == stamp  # cached
    path.write_bytes(b"A3DW junk")  # damaged: baked again
    assert read_pack(model.web_pack()).header["num_face"] == model.avatar.num_face()

    async def main():
        server = await _serve(model)
        try:
            async with aiohttp.ClientSession() as http:
                r = await http.get(server.make_url("/api/avatar.a3dw"))
                assert r.status == 200 and (await r.read())[:4] == b"A3DW"
                ws = await http.ws_connect(server.make_url("/ws"))
                ready = await _next(ws, "ready")
                assert ready["renders"] == ["server", "browser"]
                await ws.send_str('{"type": "control", "render": "browser"}')
                await ws.send_str('{"type": "start", "mode": "mic"}')
                await ws.send_bytes(_pcm16(speechy_audio(0.3)))
                head, jpeg = await _next(ws, "frame")
                while "draw" not in head:
                    head, jpeg = await _next(ws, "frame")
                assert jpeg == b"" and len(head["draw"]["code"]) == 52
                await ws.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_model_refuses_bad_runs(tmp_path, run_dir):
    with pytest.raises(UserError, match="run not found"):
        ViewerModel(tmp_path / "nope", torch.device("cpu"))
    with pytest.raises(UserError, match="idle-frames"):
        ViewerModel(run_dir, torch.device("cpu"), idle_frames=0)


# ---------------------------------------------------------------------------------------------
# Protocol


def test_parse_text_rules():
    ex, res = ("blink", "jaw"), (128, 256)
    ok = P.parse_text(json.dumps({"type": "control", "yaw": 3, "expression": {"jaw": 0.5}, "resolution": 256}), ex, res)
    assert ok == P.Control(expression={"jaw": 0.5}, yaw=3.0, resolution=256)
    assert P.parse_text('{"type": "start", "mode": "file"}', ex, res) == P.Start("file")
    bad = [
        ("{not json", "not JSON"), ("[1, 2]", "JSON object"), ('{"kind": 1}', "type"),
        ('{"type": "dance"}', "unknown message type"), ('{"type": "start", "mode": "tv"}', "mode"),
        ('{"type": "control", "yaw": "left"}', "yaw must be a number"),
        ('{"type": "control", "yaw": true}', "yaw must be a number"),
        ('{"type": "control", "zoom": 99}', "zoom must be in"),
        ('{"type": "control", "resolution": 300}', "resolution must be one of"),
        ('{"type": "control", "expression": {"wink": 1}}', "unknown expression"),
        ('{"type": "control", "expression": [1]}', "expression must be"),
        ('{"type": "control", "paused": 1}', "paused must be true or false"),
        ('{"type": "control", "render": "gpu"}', "render must be server or browser"),
        (json.dumps({"type": "ping", "pad": "x" * P.MAX_TEXT_BYTES}), "over 4096 bytes"),
    ]
    for text, why in bad:
        with pytest.raises(P.ProtocolError, match=why):
            P.parse_text(text, ex, res)
    with pytest.raises(P.ProtocolError, match="odd number"):
        P.parse_audio(b"\x00\x01\x02")
    with pytest.raises(P.ProtocolError, match="over 65536"):
        P.parse_audio(bytes(P.MAX_AUDIO_BYTES + 2))
    head, jpeg = P.read_frame_message(P.frame_message({"k": 3, "t": 0.12}, b"JPEG"))
    assert head == {"k": 3, "t": 0.12} and jpeg == b"JPEG"


async def _serve(model, host: str = "127.0.0.1", **kw):
    server = TestServer(make_app(model, **kw), host=host)
    await server.start_server()
    return server


async def _next(ws, kind: str, timeout: float = 30.0):
    """The next message of ``kind`` ("error", "ready", "frame", ...) on ``ws``, skipping others."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            if kind == "frame":
                return P.read_frame_message(msg.data)
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"connection ended while waiting for {kind}: {msg.type} {msg.data} {msg.extra}")
        obj = json.loads(msg.data)
        if obj["type"] == kind:
            return obj


async def _frames_flow(ws, audio: np.ndarray) -> int:
    """Send audio in 20 ms chunks; the number of frames the stream has accounted for by its end:
    those that came back plus those its outbox dropped while the client was not reading (the
    last header's ``dropped``)."""
    for i in range(0, len(audio), 320):
        await ws.send_bytes(_pcm16(audio[i : i + 320]))
    await ws.send_str('{"type": "end"}')
    got = dropped = 0
    while True:
        msg = await asyncio.wait_for(ws.receive(), 60)
        if msg.type == aiohttp.WSMsgType.BINARY:
            got += 1
            dropped = P.read_frame_message(msg.data)[0]["dropped"]
        elif json.loads(msg.data)["type"] == "ended":
            return got + dropped


def test_protocol_errors_leave_other_clients_served(model):
    bad_messages = [
        ("str", "{oops"), ("str", '"just a string"'), ("str", '{"type": "control", "zoom": "big"}'),
        ("str", '{"type": "teleport"}'), ("str", json.dumps({"type": "ping", "x": "y" * 5000})),
        ("bytes", bytes(P.MAX_AUDIO_BYTES + 2)),  # oversized audio
        ("bytes", b"\x01\x02\x03"),  # odd byte count
        ("bytes", b"\x00\x00" * 320),  # binary where text is expected: audio before start
        ("str", '{"type": "end"}'),  # end before start
    ]

    async def main():
        server = await _serve(model, max_sessions=2)
        try:
            async with aiohttp.ClientSession() as http:
                good = await http.ws_connect(server.make_url("/ws"))
                bad = await http.ws_connect(server.make_url("/ws"))
                ready = await _next(good, "ready")
                assert ready["protocol"] == 1 and ready["sample_rate"] == 16000 and ready["resolutions"]
                await _next(bad, "ready")
                held = [weakref.ref(c.session) for c in server.app[STATE].sessions]
                await good.send_str('{"type": "start", "mode": "mic"}')
                await bad.send_str('{"type": "control", "resolution": 128}')
                for i, (kind, data) in enumerate(bad_messages):
                    await (bad.send_str(data) if kind == "str" else bad.send_bytes(data))
                    err = await _next(bad, "error")
                    assert not err["fatal"] and err["message"], err
                    # the other client is served all along
                    await good.send_bytes(_pcm16(speechy_audio(0.1, seed=i)))
                # text where binary is expected (mid-stream): an error, the stream goes on
                await bad.send_str('{"type": "start", "mode": "mic"}')
                await bad.send_bytes(_pcm16(speechy_audio(0.2)))
                await bad.send_str("PCM?")
                assert "not JSON" in (await _next(bad, "error"))["message"]
                assert await _frames_flow(bad, speechy_audio(0.4)) > 0
                assert await _frames_flow(good, speechy_audio(0.4)) >= 32  # every frame of 9 x 0.1 s + 0.4 s, sent or dropped
                # a third session is past the cap: one fatal error, then closed
                third = await http.ws_connect(server.make_url("/ws"))
                err = await _next(third, "error")
                assert err["fatal"] and "server is full" in err["message"]
                assert (await third.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                await bad.close()
                await good.send_str('{"type": "ping", "t": 7}')
                assert (await _next(good, "pong"))["t"] == 7
                await good.close()
                for _ in range(100):  # sessions are closed and what they held is freed
                    gc.collect()
                    if not server.app[STATE].sessions and all(ref() is None for ref in held):
                        break
                    await asyncio.sleep(0.05)
                assert not server.app[STATE].sessions
                assert all(ref() is None for ref in held)
                fourth = await http.ws_connect(server.make_url("/ws"))
                assert (await _next(fourth, "ready"))["protocol"] == 1
                await fourth.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_token_and_origin(model):
    token = server_token("0.0.0.0", None)
    assert token and len(token) >= 16  # off loopback a token is made up
    assert server_token("127.0.0.1", None) is None and server_token("::1", None) is None
    with pytest.raises(UserError, match="at least 8"):
        server_token("0.0.0.0", "short")

    async def main():
        server = await _serve(model, host="0.0.0.0", token=token)  # a non-loopback bind
        try:
            async with aiohttp.ClientSession() as http:
                for query in ("", "?token=wrong-token-123"):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                        await http.ws_connect(server.make_url("/ws" + query))
                    assert exc.value.status == 403
                    async with http.get(server.make_url("/api/info" + query)) as r:
                        assert r.status == 403
                ws = await http.ws_connect(server.make_url(f"/ws?token={token}"))
                assert (await _next(ws, "ready"))["protocol"] == 1
                await ws.close()
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:  # another site's page
                    await http.ws_connect(server.make_url(f"/ws?token={token}"), origin="http://evil.example")
                assert exc.value.status == 403
                async with http.get(server.make_url("/")) as r:  # the page itself is public
                    assert r.status == 200 and "avatar3d" in await r.text()
                async with http.get(server.make_url(f"/api/audio/dataset?token={token}")) as r:
                    assert r.status == 200 and (await r.read())[:4] == b"RIFF"
        finally:
            await server.close()

    asyncio.run(main())


def test_a_failed_draw_is_reported_and_the_stream_goes_on(model, monkeypatch):
    calls = {"n": 0}
    draw = ViewerModel.draw_params

    def flaky(self, params):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return draw(self, params)

    monkeypatch.setattr(ViewerModel, "draw_params", flaky)

    async def main():
        server = await _serve(model)
        try:
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(server.make_url("/ws"))
                await _next(ws, "ready")
                await ws.send_str('{"type": "start", "mode": "mic"}')
                await ws.send_bytes(_pcm16(speechy_audio(0.2)))
                err = await _next(ws, "error")
                assert "server error" in err["message"] and "simulated" in err["message"] and not err["fatal"]
                assert await _frames_flow(ws, speechy_audio(0.4)) > 0
                await ws.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_slow_client_gets_frames_dropped(model):
    """A client that never reads: the server keeps at most 8 frames for it and goes on."""
    from avatar3d.viewer.server import Outbox
    from avatar3d.viewer.session import Frame

    class Stuck:
        async def send_bytes(self, data):
            await asyncio.Event().wait()

    async def main():
        box = Outbox(Stuck())
        for k in range(30):
            box.frame(Frame(k, np.zeros(28, np.float32)))
        assert sum(kind == "frame" for kind, _ in box.items) == P.MAX_FRAME_QUEUE and box.dropped == 22
        assert [f.k for _, f in box.items] == list(range(22, 30))  # the newest are kept

    asyncio.run(main())


def test_view_cli_errors(tmp_path, capsys):
    from avatar3d.cli import main

    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "avatar3d view: error:" in capsys.readouterr().err

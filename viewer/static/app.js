// avatar3d viewer page: audio up, frames down, one WebSocket (viewer/PROTOCOL.md).
//
// Microphone: an AudioWorklet (worklet.js) turns the mic into 20 ms chunks of 16 kHz PCM, each
// sent at once; every frame is shown as soon as it is decoded. Latency of a frame = its display
// time - the time its first audio sample reached the worklet (sound to picture).
// File: the page decodes the file, resamples it to 16 kHz (OfflineAudioContext), sends it a
// little ahead of playback and shows frame k when the audio clock reaches k * 40 ms, so picture
// and sound cannot drift apart; drift = audio clock at display - the frame's time.
// Everything measured is in window.avatar3dStats (see README).
"use strict";

const query = new URLSearchParams(location.search);
const TOKEN = query.get("token");
const JAW_OPEN = Number(query.get("jaw") || 0.15); // jawOpen past which the mouth counts as open
const ONSET_DB = -35, QUIET_DB = -45, QUIET_MS = 300; // speech-burst onsets (dBFS of 20 ms chunks)
const FILE_AHEAD_S = 0.3; // file mode: audio sent ahead of the playback position (> the 80 ms look-ahead)
const KEEP = 3000; // per-frame records kept in the stats

const stats = (window.avatar3dStats = {
  state: "connecting", mode: query.get("mode") === "file" ? "file" : "mic", render: "server",
  frames: 0, frames_drawn: 0, fps: 0, latency_ms_p50: null, latency_ms_p95: null,
  mouth_latency_ms: [], onsets: 0, drift_ms_p50: null, drift_ms_p95: null, drift_log: [],
  dropped: 0, render_ms: null, beyond_training: false, motion: null, jaw: null, codes: [], errors: [], ended: false,
  resolution: null, session: null, shown: null,
  // browser render mode: the baked avatar's file (bytes, ms to load and set up) and the page's
  // own drawing (ms a frame, medians of the last 250), the Gaussians drawn, the draw of the frame shown
  browser: { bytes: null, load_ms: null, draw_ms: null, gaussians: null, half_float: null, shown_draw: null },
  // mic mode, per drawn frame (ms, medians of the last 250): audio of the frame and its
  // look-ahead complete -> frame received (server + network), received -> on screen
  budget: { server_network_ms: null, render_ms: null, decode_display_ms: null },
});
const budget = { server_network_ms: [], render_ms: [], decode_display_ms: [] };

const $ = (id) => document.getElementById(id);
const canvas = $("view"), g2d = canvas.getContext("2d"), hud = $("hud");
let ws = null, ready = null, ctx = null;
let mic = null; // {stream, node, source, sink}
let file = null; // {pcm, sent, source, t0, ended}
let sampleTimes = []; // [chunkIndex] -> performance ms of the chunk's first sample (mic)
let samplesSent = 0;
let lastDrawnK = -1, pendingOnset = null, quietMs = QUIET_MS;
const latencies = [], drifts = [], drawTimes = [];
const frameBuffer = new Map(); // file mode: k -> {t, jaw, bitmap} (server render) or {t, jaw, draw} (browser render)
let view = { yaw: 0, pitch: 0, zoom: 1, resolution: null, idle_motion: true, paused: false, expression: {}, render: "server" };
let baked = null; // browser render mode: the A3DW.BakedAvatar (splat.js)
let drawing = null, nextDraw = null; // browser render mode, mic: the draw in progress and the newest waiting
const browserDrawMs = [];

function pct(a, p) {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return Math.round(s[Math.min(s.length - 1, Math.floor(p * s.length))] * 10) / 10;
}
function push(arr, v, n = 250) { arr.push(v); if (arr.length > n) arr.shift(); }
function showError(msg) { $("error").textContent = msg; push(stats.errors, msg, 50); }

// -- connection --------------------------------------------------------------------------------

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${proto}://${location.host}/ws${TOKEN ? "?token=" + encodeURIComponent(TOKEN) : ""}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onFrame(ev.data));
  ws.onclose = (ev) => { stats.state = "closed"; hud.textContent = `disconnected (${ev.code}) ${ev.reason || ""}`; };
}
function send(obj) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(obj)); }
function control(change) { Object.assign(view, change); send({ type: "control", ...change }); }

function onText(msg) {
  if (msg.type === "ready") {
    ready = msg; stats.state = "ready"; stats.session = msg.session; view.resolution = msg.resolution;
    $("title").textContent = `avatar3d · ${msg.run} (${msg.field}, ${msg.device})`;
    buildControls();
    const start = query.get("autostart") !== "0";
    const want = query.get("render") === "browser" ? "browser" : "server";
    setRender(want).then(() => setMode(stats.mode, start));
  } else if (msg.type === "error") {
    showError(msg.message);
    if (msg.fatal) hud.textContent = msg.message;
  } else if (msg.type === "ended") {
    stats.ended = true;
  }
}

function onFrame(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const jpeg = new Uint8Array(buf, 4 + n);
  stats.frames++; stats.motion = head.motion; stats.jaw = head.jaw; stats.dropped = head.dropped;
  push(stats.codes, [head.k, head.t, head.jaw], KEEP);
  if (head.render_ms) stats.render_ms = head.render_ms;
  if (head.draw) { onDrawFrame(head); return; }
  if (!jpeg.length) return;
  stats.beyond_training = head.beyond_training;
  head.received = performance.now();
  const bitmap = createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }));
  if (stats.mode === "file") {
    frameBuffer.set(head.k, { t: head.t, jaw: head.jaw, bitmap: null });
    bitmap.then((b) => { const f = frameBuffer.get(head.k); if (f) f.bitmap = b; else b.close(); });
  } else {
    bitmap.then((b) => display(head, b));
  }
}

// browser render mode: a frame header with `draw` (no picture): the page draws it (splat.js)
function onDrawFrame(head) {
  if (!baked) return;
  stats.beyond_training = head.beyond_training;
  head.received = performance.now();
  if (stats.mode === "file") { frameBuffer.set(head.k, { t: head.t, jaw: head.jaw, draw: head.draw }); return; }
  nextDraw = head; // mic: draw the newest; frames that arrive while one is drawn wait, only the newest
  if (!drawing) drawing = drawPending();
}
async function drawPending() {
  while (nextDraw) {
    const head = nextDraw; nextDraw = null;
    try { display(head, await drawBaked(head.draw)); } catch (e) { showError(`browser render: ${e.message || e}`); }
  }
  drawing = null;
}
async function drawBaked(draw) {
  const t0 = performance.now();
  const picture = await baked.draw(draw);
  push(browserDrawMs, performance.now() - t0);
  stats.browser.draw_ms = pct(browserDrawMs, 0.5); stats.browser.gaussians = baked.stats.visible;
  stats.browser.parts_ms = { ...baked.stats };
  return picture;
}

// Show a picture (ImageBitmap from the server, or the baked avatar's canvas) for frame head.k.
function display(head, picture) {
  if (head.k <= lastDrawnK) { if (picture.close) picture.close(); return; }
  if (canvas.width !== picture.width) { canvas.width = picture.width; canvas.height = picture.height; }
  g2d.drawImage(picture, 0, 0);
  if (picture.close) picture.close();
  const now = performance.now();
  lastDrawnK = head.k; stats.frames_drawn++; stats.resolution = canvas.width;
  stats.shown = [head.k, head.jaw];
  stats.browser.shown_draw = head.draw || null;
  push(drawTimes, now, 100);
  if (stats.mode === "mic") {
    const captured = sampleTime(head.k * 640);
    if (captured !== null) {
      push(latencies, now - captured);
      stats.latency_ms_p50 = pct(latencies, 0.5); stats.latency_ms_p95 = pct(latencies, 0.95);
    }
    // the end of the frame's look-ahead: the time of its last sample, plus that sample's 1/16 ms
    // (the sample after it may not be captured yet when a frame comes back this fast)
    const last = sampleTime((head.k + 1 + ready.lookahead_frames) * 640 - 1);
    const complete = last === null ? null : last + 1000 / 16000;
    if (complete !== null && head.received) {
      push(budget.server_network_ms, head.received - complete);
      push(budget.render_ms, head.render_ms);
      push(budget.decode_display_ms, now - head.received);
      for (const key in budget) stats.budget[key] = pct(budget[key], 0.5);
    }
    if (pendingOnset && head.jaw >= JAW_OPEN && (head.k + 1) * 640 > pendingOnset.sample) {
      push(stats.mouth_latency_ms, Math.round(now - pendingOnset.ms), 1000);
      pendingOnset = null;
    }
  }
}

function sampleTime(s) {
  const c = Math.floor(s / 320), t = sampleTimes[c];
  return t === undefined ? null : t + ((s % 320) / 16000) * 1000;
}

setInterval(() => { // once a second: fps and the on-screen numbers
  const now = performance.now();
  stats.fps = drawTimes.filter((t) => now - t <= 1000).length;
  if (!ready) return;
  const lat = stats.mode === "mic"
    ? `latency ${stats.latency_ms_p50 ?? "-"} ms (p95 ${stats.latency_ms_p95 ?? "-"})` +
      (stats.mouth_latency_ms.length ? `  mouth ${pct(stats.mouth_latency_ms, 0.5)} ms` : "")
    : `drift ${stats.drift_ms_p50 ?? "-"} ms (p95 ${stats.drift_ms_p95 ?? "-"})`;
  hud.textContent = `${stats.mode} · ${stats.fps} fps · ${lat}\nframes ${stats.frames}  dropped ${stats.dropped}  ` +
    (stats.render === "browser" ? `drawn here ${stats.browser.draw_ms ?? "-"} ms/frame` : `server ${stats.render_ms ?? "-"} ms/frame`) +
    `  ${canvas.width}²` +
    (stats.beyond_training ? "\nturned beyond the training clip's poses: extrapolated" : "");
}, 1000);

// -- audio -------------------------------------------------------------------------------------
async function audioContext() {
  if (!ctx) {
    ctx = new AudioContext({ latencyHint: "interactive" });
    await ctx.audioWorklet.addModule("/static/worklet.js");
  }
  if (ctx.state === "suspended") {
    await Promise.race([ctx.resume(), new Promise((r) => setTimeout(r, 300))]);
    if (ctx.state === "suspended") { // the browser wants a click first
      $("gesture").hidden = false;
      await new Promise((r) => ($("gesture").onclick = () => { $("gesture").hidden = true; ctx.resume().then(r); }));
    }
  }
  return ctx;
}

function newStream(mode) {
  sampleTimes = []; samplesSent = 0; lastDrawnK = -1; pendingOnset = null; quietMs = QUIET_MS;
  latencies.length = 0; drifts.length = 0; frameBuffer.clear(); stats.ended = false;
  send({ type: "start", mode });
}

function sendPcm(pcm) { // Int16Array of 16 kHz samples
  if (!ws || ws.readyState !== 1) return;
  ws.send(pcm.buffer.byteLength === pcm.length * 2 ? pcm.buffer : pcm.slice().buffer);
  samplesSent += pcm.length;
}

async function micOn() {
  const c = await audioContext();
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
  });
  const source = c.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(c, "avatar3d-capture", { processorOptions: { targetRate: 16000, chunk: 320 } });
  const sink = c.createGain(); sink.gain.value = 0; // keeps the worklet pulled, plays nothing
  source.connect(node); node.connect(sink); sink.connect(c.destination);
  newStream("mic");
  node.port.onmessage = (ev) => {
    const firstMs = performance.now() - ev.data.lag * 1000 - ((ev.data.pcm.length - 1) / 16000) * 1000;
    const chunk = samplesSent / 320;
    sampleTimes[chunk] = firstMs;
    if (chunk >= 1000) delete sampleTimes[chunk - 1000];
    detectOnset(ev.data.pcm, samplesSent, firstMs);
    sendPcm(ev.data.pcm);
  };
  mic = { stream, source, node, sink };
  $("mic-toggle").textContent = "Mic off";
  stats.state = "streaming";
}

function micOff() {
  if (!mic) return;
  mic.node.port.onmessage = null;
  mic.stream.getTracks().forEach((t) => t.stop());
  mic.source.disconnect(); mic.node.disconnect(); mic.sink.disconnect();
  mic = null;
  send({ type: "end" });
  $("mic-toggle").textContent = "Mic on";
  stats.state = "ready";
}

function detectOnset(pcm, firstSample, firstMs) { // a burst after >= 300 ms of quiet
  let e = 0;
  for (const v of pcm) e += (v / 32768) ** 2;
  const db = 10 * Math.log10(e / pcm.length + 1e-12);
  if (db < QUIET_DB) { quietMs += 20; return; }
  if (db > ONSET_DB && quietMs >= QUIET_MS) {
    let i = 0; // first sample of the burst within the chunk
    const thr = 32768 * 10 ** (ONSET_DB / 20);
    while (i < pcm.length - 1 && Math.abs(pcm[i]) < thr) i++;
    pendingOnset = { sample: firstSample + i, ms: firstMs + (i / 16000) * 1000 };
    stats.onsets++;
  }
  if (db >= QUIET_DB) quietMs = 0;
}

async function fileStart(source) {
  fileStop();
  const c = await audioContext();
  let bytes;
  if (source === "dataset") {
    const r = await fetch(`/api/audio/dataset${TOKEN ? "?token=" + encodeURIComponent(TOKEN) : ""}`);
    if (!r.ok) { showError(`no dataset audio: ${r.status}`); return; }
    bytes = await r.arrayBuffer();
  } else {
    bytes = await source.arrayBuffer();
  }
  let decoded;
  try { decoded = await c.decodeAudioData(bytes); } catch (e) { showError(`cannot decode that audio: ${e}`); return; }
  const off = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * 16000)), 16000);
  const src = off.createBufferSource(); src.buffer = decoded; src.connect(off.destination); src.start();
  const pcm = (await off.startRendering()).getChannelData(0);
  newStream("file");
  file = { pcm, sent: 0, decoded, source: null, t0: null, ended: false, timer: null };
  file.timer = setInterval(pumpFile, 20);
  pumpFile();
  stats.state = "streaming";
  requestAnimationFrame(showFileFrames);
}

function fileClock() { // seconds of the file heard so far (null before playback)
  if (!file || file.t0 === null) return null;
  const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  const now = ts && ts.contextTime > 0 ? ts.contextTime + (performance.now() - ts.performanceTime) / 1000 : ctx.currentTime;
  return now - file.t0;
}

function pumpFile() {
  if (!file || view.paused) return;
  const heard = fileClock() ?? 0;
  while (file.sent < file.pcm.length && file.sent / 16000 < heard + FILE_AHEAD_S) {
    const f = file.pcm.subarray(file.sent, file.sent + 320);
    const pcm = new Int16Array(f.length);
    for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(f[i] * 32767)));
    sendPcm(pcm); file.sent += f.length;
  }
  if (file.sent >= file.pcm.length && !file.ended) { file.ended = true; send({ type: "end" }); }
  if (file.t0 === null && frameBuffer.size > 0) { // first picture here: start the sound
    const s = ctx.createBufferSource(); s.buffer = file.decoded; s.connect(ctx.destination);
    file.t0 = ctx.currentTime + 0.1; s.start(file.t0); file.source = s;
  }
}

function showFileFrames() {
  if (!file) return;
  const pos = fileClock();
  if (pos !== null && !view.paused) {
    let best = null;
    // a frame the page draws itself is started that much ahead of its time (the median draw),
    // so that it reaches the screen when the audio does
    const lead = (stats.browser.draw_ms ?? 0) / 1000;
    for (const [k, f] of frameBuffer) {
      if (f.t <= pos + (f.draw ? lead : 0)) { if (!best || k > best.k) best = { k, ...f }; }
    }
    if (best && (best.bitmap || (best.draw && !drawing)) && best.k > lastDrawnK) {
      for (const k of frameBuffer.keys()) if (k <= best.k) { const f = frameBuffer.get(k); if (k < best.k && f.bitmap) f.bitmap.close(); frameBuffer.delete(k); }
      const shown = (picture) => {
        const d = (fileClock() - best.t) * 1000;
        push(drifts, d);
        stats.drift_ms_p50 = pct(drifts, 0.5); stats.drift_ms_p95 = pct(drifts, 0.95);
        if (!stats.drift_log.length || pos - stats.drift_log[stats.drift_log.length - 1][0] >= 10) {
          push(stats.drift_log, [Math.round(pos * 10) / 10, stats.drift_ms_p50], 10000); // [s, median of recent]
        }
        display({ k: best.k, jaw: best.jaw, draw: best.draw }, picture);
      };
      if (best.bitmap) shown(best.bitmap);
      else drawing = drawBaked(best.draw).then(shown, (e) => showError(`browser render: ${e.message || e}`)).finally(() => { drawing = null; });
    }
    if (file.ended && stats.ended && pos > file.pcm.length / 16000 + 0.2) { stats.state = "done"; }
  }
  requestAnimationFrame(showFileFrames);
}

function fileStop() {
  if (!file) return;
  clearInterval(file.timer);
  if (file.source) try { file.source.stop(); } catch (e) { /* not started */ }
  if (!file.ended) send({ type: "end" });
  file = null;
}

// -- controls ----------------------------------------------------------------------------------
// Who draws the frames: "server" (JPEGs) or "browser" (the baked avatar, loaded once, drawn here).
async function setRender(render) {
  if (render === "browser" && !ready.renders.includes("browser")) {
    showError("this run cannot be drawn in the browser; the server draws it"); render = "server";
  }
  if (render === "browser" && !baked) {
    const t0 = performance.now();
    hud.textContent = "loading the avatar…";
    try {
      baked = await A3DW.load(`/api/avatar.a3dw${TOKEN ? "?token=" + encodeURIComponent(TOKEN) : ""}`,
        (got, total) => { hud.textContent = `loading the avatar… ${(got / 1e6).toFixed(1)}${total ? " / " + (total / 1e6).toFixed(1) : ""} MB`; });
      await baked.base(0);
      Object.assign(stats.browser, { bytes: baked.bytes, load_ms: Math.round(performance.now() - t0), half_float: baked.halfFloat });
    } catch (e) {
      showError(`browser render: ${e.message || e}; the server draws`); render = "server";
    }
  }
  stats.render = render; $("render").value = render;
  control({ render });
}

async function setMode(mode, start) {
  stats.mode = mode;
  document.querySelector(`input[name=mode][value=${mode}]`).checked = true;
  $("mic-controls").hidden = mode !== "mic"; $("file-controls").hidden = mode !== "file";
  micOff(); fileStop();
  try {
    if (start && mode === "mic") await micOn();
    if (start && mode === "file") await fileStart(query.get("audio") || "dataset");
  } catch (e) { showError(`${mode}: ${e.message || e}`); }
}

function buildControls() {
  $("render").onchange = () => setRender($("render").value);
  const res = $("resolution"); res.innerHTML = "";
  for (const r of ready.resolutions) res.add(new Option(`${r}²`, r, false, r === ready.resolution));
  const want = Number(query.get("res"));
  if (ready.resolutions.includes(want)) { res.value = want; control({ resolution: want }); }
  res.onchange = () => control({ resolution: Number(res.value) });
  $("zoom").max = ready.zoom_limit;
  $("zoom").oninput = () => control({ zoom: Number($("zoom").value) });
  if (query.get("idle") === "0") { $("idle").checked = false; control({ idle_motion: false }); }
  $("idle").onchange = () => control({ idle_motion: $("idle").checked });
  const box = $("expressions"); box.querySelectorAll("label").forEach((l) => l.remove());
  for (const name of ready.expressions) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="range" min="-1" max="1" step="0.05" value="0"> ${name}`;
    label.firstChild.oninput = (ev) => {
      view.expression[name] = Number(ev.target.value);
      control({ expression: { ...view.expression } });
    };
    box.appendChild(label);
  }
}

document.querySelectorAll("input[name=mode]").forEach((r) => (r.onchange = () => setMode(r.value, false)));
$("mic-toggle").onclick = () => (mic ? micOff() : micOn().catch((e) => showError(`mic: ${e.message || e}`)));
$("file-source").onchange = () => { if ($("file-source").value === "pick") $("file-input").click(); };
$("file-input").onchange = () => { if ($("file-input").files[0]) fileStart($("file-input").files[0]); };
$("file-play").onclick = () => fileStart($("file-source").value === "pick" && $("file-input").files[0] ? $("file-input").files[0] : "dataset");
$("pause").onclick = () => {
  const paused = !view.paused;
  control({ paused });
  $("pause").textContent = paused ? "Resume" : "Pause";
  if (ctx && stats.mode === "file") (paused ? ctx.suspend() : ctx.resume());
};
$("reset").onclick = () => { $("zoom").value = 1; control({ yaw: 0, pitch: 0, zoom: 1 }); };
canvas.ondblclick = () => $("reset").onclick();

let drag = null, lastSent = 0;
canvas.onpointerdown = (e) => { drag = { x: e.clientX, y: e.clientY, yaw: view.yaw, pitch: view.pitch }; canvas.setPointerCapture(e.pointerId); };
canvas.onpointerup = () => { if (drag) control({ yaw: view.yaw, pitch: view.pitch }); drag = null; };
canvas.onpointermove = (e) => {
  if (!drag || !ready) return;
  const clamp = (v, m) => Math.max(-m, Math.min(m, v));
  const yaw = clamp(drag.yaw + (e.clientX - drag.x) * 0.2, ready.yaw_limit);
  const pitch = clamp(drag.pitch - (e.clientY - drag.y) * 0.2, ready.pitch_limit);
  const now = performance.now();
  if (now - lastSent > 40) { lastSent = now; control({ yaw, pitch }); } else Object.assign(view, { yaw, pitch });
};
canvas.onwheel = (e) => {
  e.preventDefault();
  if (!ready) return;
  const zoom = Math.max(1, Math.min(ready.zoom_limit, view.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)));
  $("zoom").value = zoom; control({ zoom });
};

connect();

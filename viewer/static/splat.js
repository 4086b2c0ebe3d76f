// avatar3d's browser renderer: the baked Gaussian avatar (an .a3dw file, avatar3d/gaussian/webpack.py)
// drawn in the page with WebGL2, for the viewer's browser render mode.
//
// Per frame (BakedAvatar.draw): the face Gaussians' offsets from the motion code (bias + the
// per-channel terms of the clamped code, sparse, + the residual's directions weighted by its small
// net of the clamped code), the mouth Gaussians' offsets from its channels;
// then, on the CPU in float64, the EWA projection of avatar3d/gaussian/rasterize.py (`project`:
// the same clamp of x/z, eps2d, near plane, opacity cull and bounding boxes); a depth sort; and one
// draw of the boxes (two triangles each) into a half-float framebuffer whose fragment shader evaluates
// alpha = min(0.999, o exp(-sigma)) (discarded below 1/255) and blends back to front with the
// premultiplied "over" operator: the front-to-back sum of rasterize.py without its transmittance
// cut at 1e-4. The head texture is then composited, bilinearly resampled, over the frame's base
// (torso and background, a JPEG of the file) cropped and scaled as the server's layout says.
"use strict";

const A3DW = (() => {
  const ALPHA_MIN = 1 / 255, EPS2D = 0.3, NEAR_PLANE = 0.01; // as avatar3d/gaussian/rasterize.py
  const BASES_KEPT = 8; // decoded base frames kept either side of the one shown

  let halfTable = null;
  function halves(u16) { // float16 bits -> Float32Array
    if (!halfTable) {
      halfTable = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) {
        const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
        halfTable[h] = e === 0 ? s * 2 ** -14 * (f / 1024) : e === 31 ? (f ? NaN : s * Infinity) : s * 2 ** (e - 15) * (1 + f / 1024);
      }
    }
    const out = new Float32Array(u16.length);
    for (let i = 0; i < u16.length; i++) out[i] = halfTable[u16[i]];
    return out;
  }

  const TYPES = { float32: Float32Array, float16: Uint16Array, int8: Int8Array, uint8: Uint8Array, uint32: Uint32Array };

  // The file's header and arrays (float16 arrays come back as Float32Array). Throws an Error with a
  // one-line reason on anything that is not a whole version-2 file.
  function parse(buf) {
    const dv = new DataView(buf);
    if (buf.byteLength < 12 || String.fromCharCode(...new Uint8Array(buf, 0, 4)) !== "A3DW") throw new Error("not an avatar3d web file");
    const version = dv.getUint32(4, true), n = dv.getUint32(8, true);
    if (version !== 2) throw new Error(`avatar3d web file version ${version}; this page reads 2`);
    if (12 + n > buf.byteLength) throw new Error("the avatar file is cut short (its header)");
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 12, n)));
    const start = 12 + n, arrays = {};
    for (const [name, a] of Object.entries(header.arrays)) {
      const T = TYPES[a.dtype];
      if (!T) throw new Error(`array ${name} has an unknown dtype ${a.dtype}`);
      if (start + a.offset + a.nbytes > buf.byteLength) throw new Error(`the avatar file is cut short (array ${name})`);
      const view = new T(buf, start + a.offset, a.nbytes / T.BYTES_PER_ELEMENT);
      arrays[name] = a.dtype === "float16" ? halves(view) : view;
    }
    return { header, arrays };
  }

  // Per-Gaussian int8 terms [N, C, 10] with their scale [C, 10], sparse: per column c the
  // (gaussian * 10 + component) indices and the values of its non-zero terms.
  function sparseColumns(q, scale, N, C) {
    const columns = [];
    for (let c = 0; c < C; c++) {
      let count = 0;
      for (let n = 0; n < N; n++) for (let d = 0; d < 10; d++) if (q[(n * C + c) * 10 + d]) count++;
      const idx = new Uint32Array(count), val = new Float32Array(count);
      let j = 0;
      for (let n = 0; n < N; n++) for (let d = 0; d < 10; d++) {
        const v = q[(n * C + c) * 10 + d];
        if (v) { idx[j] = n * 10 + d; val[j] = v * scale[c * 10 + d]; j++; }
      }
      columns.push({ idx, val });
    }
    return columns;
  }

  // One dense layer y = w . x + b (w [out, in] row-major), then silu(y) = y / (1 + e^-y) unless last.
  function dense(layer, x, last) {
    const out = layer.b.length, inn = x.length, y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let v = layer.b[o];
      for (let i = 0; i < inn; i++) v += layer.w[o * inn + i] * x[i];
      y[o] = last ? v : v / (1 + Math.exp(-v));
    }
    return y;
  }

  function quatToRot(w, x, y, z) { // normalised, row-major 3x3
    const n = Math.hypot(w, x, y, z) || 1;
    w /= n; x /= n; y /= n; z /= n;
    return [
      1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
      2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
      2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ];
  }

  // One quad (two triangles, 6 vertices) per Gaussian, its numbers fetched from a float texture of
  // 3 texels a Gaussian: (centre x, y in pixels from the top left, box half-width, half-height),
  // (conic a, b, c, opacity), (r, g, b, 0). No instancing: SwiftShader, the software WebGL of
  // headless Chromium, sets up every instance as a draw of its own (17 us each).
  const TEX_WIDTH = 3 * 512; // texels a row (WebGL2 guarantees 2048)
  const SPLAT_VS = `#version 300 es
    precision highp float;
    precision highp sampler2D;
    uniform sampler2D u_splats;
    uniform vec2 u_size;
    out vec2 v_center; out vec3 v_conic; out vec4 v_color;
    const vec2 CORNERS[6] = vec2[6](vec2(-1, -1), vec2(1, -1), vec2(-1, 1), vec2(-1, 1), vec2(1, -1), vec2(1, 1));
    vec4 fetch(int i) { return texelFetch(u_splats, ivec2(i % ${TEX_WIDTH}, i / ${TEX_WIDTH}), 0); }
    void main() {
      int g = gl_VertexID / 6;
      vec4 box = fetch(3 * g), conic = fetch(3 * g + 1), color = fetch(3 * g + 2);
      vec2 p = box.xy + CORNERS[gl_VertexID % 6] * box.zw;
      gl_Position = vec4(p.x / u_size.x * 2.0 - 1.0, 1.0 - p.y / u_size.y * 2.0, 0.0, 1.0);
      v_center = box.xy; v_conic = conic.xyz; v_color = vec4(color.rgb, conic.w);
    }`;
  const SPLAT_FS = `#version 300 es
    precision highp float;
    uniform vec2 u_size;
    in vec2 v_center; in vec3 v_conic; in vec4 v_color;
    out vec4 outColor;
    void main() {
      vec2 d = vec2(gl_FragCoord.x, u_size.y - gl_FragCoord.y) - v_center;
      float sigma = 0.5 * (v_conic.x * d.x * d.x + v_conic.z * d.y * d.y) + v_conic.y * d.x * d.y;
      float alpha = min(0.999, v_color.a * exp(-sigma));
      if (sigma < 0.0 || alpha < ${ALPHA_MIN}) discard;
      outColor = vec4(v_color.rgb * alpha, alpha);
    }`;
  // a textured quad: dst rectangle (pixels, top-left origin) <- src rectangle (texture uv)
  const QUAD_VS = `#version 300 es
    precision highp float;
    uniform vec4 u_dst; uniform vec4 u_src; uniform vec2 u_size;
    out vec2 v_uv;
    void main() {
      vec2 c = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1));
      vec2 p = u_dst.xy + c * u_dst.zw;
      gl_Position = vec4(p.x / u_size.x * 2.0 - 1.0, 1.0 - p.y / u_size.y * 2.0, 0.0, 1.0);
      v_uv = u_src.xy + c * u_src.zw;
    }`;
  const QUAD_FS = `#version 300 es
    precision highp float;
    uniform sampler2D u_tex; uniform float u_clamp;
    in vec2 v_uv; out vec4 outColor;
    void main() { vec4 c = texture(u_tex, v_uv); outColor = u_clamp > 0.5 ? min(c, vec4(1.0)) : vec4(c.rgb, 1.0); }`;

  // the bound 2D texture: bilinear sampling, clamped at its edges
  function bilinear(gl) {
    for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
                          [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]])
      gl.texParameteri(gl.TEXTURE_2D, k, v);
  }

  function program(gl, vs, fs) {
    const p = gl.createProgram();
    for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
      const s = gl.createShader(type);
      gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(`shader: ${gl.getShaderInfoLog(s)}`);
      gl.attachShader(p, s);
    }
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(`shader link: ${gl.getProgramInfoLog(p)}`);
    const u = {};
    for (let i = 0; i < gl.getProgramParameter(p, gl.ACTIVE_UNIFORMS); i++) {
      const name = gl.getActiveUniform(p, i).name;
      u[name] = gl.getUniformLocation(p, name);
    }
    return { p, u };
  }

  class BakedAvatar {
    // pack: parse()'s result. The canvas the frames are drawn on is this.canvas (not in the page).
    constructor(pack) {
      const h = pack.header, a = pack.arrays;
      this.header = h;
      this.N = h.num_face; this.M = h.num_mouth;
      this.lo = Float32Array.from(h.motion.lo); this.hi = Float32Array.from(h.motion.hi);
      this.mouthChannels = h.mouth_channels;
      this.face = { means: a["face.means"], quats: a["face.quats"], logScales: a["face.log_scales"], opac: a["face.opacities"], colors: a["face.colors"] };
      this.mouth = { means: a["mouth.means"], quats: a["mouth.quats"], logScales: a["mouth.log_scales"], opac: a["mouth.opacities"], colors: a["mouth.colors"], basis: a["mouth.basis"] };
      this.bias = a["face.bias"];
      this.terms = sparseColumns(a["face.terms"], a["face.term_scale"], this.N, 52);
      // the residual: its directions, sparse like the terms, and the net that weights them
      const rank = h.residual.rank;
      this.residual = rank ? {
        directions: sparseColumns(a["face.residual"], a["face.residual_scale"], this.N, rank),
        layers: [0, 1, 2].map((i) => ({ w: a[`residual.w${i}`], b: a[`residual.b${i}`] })),
      } : null;
      this.jpegs = a["frames.jpeg"]; this.jpegOffsets = a["frames.jpeg_offsets"];
      this.bases = new Map(); // frame position -> Promise<ImageBitmap>
      this.offsets = new Float32Array(this.N * 10);
      const total = this.N + this.M;
      this.instance = new Float32Array(total * 12);
      this.depth = new Float64Array(total);
      this.order = new Uint32Array(total);
      // the sorted Gaussians as the splat texture's rows (3 texels of 4 floats each), reused every frame
      this.packed = new Float32Array(Math.max(1, Math.ceil((3 * total) / TEX_WIDTH)) * TEX_WIDTH * 4);
      this.stats = { visible: 0, deform_ms: 0, project_ms: 0, sort_ms: 0, gl_ms: 0 };
      this.initGL();
    }

    initGL() {
      const canvas = (this.canvas = document.createElement("canvas"));
      const gl = (this.gl = canvas.getContext("webgl2", { alpha: false, antialias: false, depth: false, preserveDrawingBuffer: true, premultipliedAlpha: false }));
      if (!gl) throw new Error("this browser has no WebGL2");
      this.halfFloat = !!gl.getExtension("EXT_color_buffer_float");
      this.splat = program(gl, SPLAT_VS, SPLAT_FS);
      this.quad = program(gl, QUAD_VS, QUAD_FS);
      this.vao = gl.createVertexArray(); // attribute-less draws
      this.splatTex = gl.createTexture();
      this.splatRows = 0;
      this.headTex = gl.createTexture();
      this.fbo = gl.createFramebuffer();
      this.headSize = 0;
      this.baseTex = gl.createTexture();
      this.baseShown = -1;
      gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    }

    // The base of loop frame j (a decoded JPEG). The idle motion walks the loop one frame at a
    // time, so the neighbours are decoded ahead and frames further than BASES_KEPT away are let go.
    base(j) {
      const F = this.jpegOffsets.length - 1;
      if (!(j >= 0 && j < F)) throw new Error(`frame ${j} is not among the file's ${F} bases`);
      const decode = (i) => {
        if (i < 0 || i >= F || this.bases.has(i)) return;
        const bytes = this.jpegs.subarray(this.jpegOffsets[i], this.jpegOffsets[i + 1]);
        this.bases.set(i, createImageBitmap(new Blob([bytes], { type: "image/jpeg" }), { colorSpaceConversion: "none", premultiplyAlpha: "none" }));
      };
      for (const i of [j, j + 1, j - 1, j + 2, j - 2]) decode(i);
      for (const [i, bitmap] of this.bases) {
        if (Math.abs(i - j) > BASES_KEPT) { this.bases.delete(i); bitmap.then((b) => b.close(), () => {}); }
      }
      return this.bases.get(j);
    }

    // The face Gaussians' offsets [N, 10] (mean 3, quaternion 4, log-scale 3) for motion code
    // `code` [52] into this.offsets: bias + sum over channels of clamp(code, lo, hi) x term, + sum
    // over the residual's directions of net(clamped code) x direction.
    deform(code) {
      const off = this.offsets;
      off.set(this.bias);
      const x = new Float64Array(52);
      for (let c = 0; c < 52; c++) x[c] = Math.min(Math.max(code[c], this.lo[c]), this.hi[c]);
      const add = (columns, weights) => {
        for (let c = 0; c < columns.length; c++) {
          const v = weights[c];
          if (v === 0) continue;
          const { idx, val } = columns[c];
          for (let j = 0; j < idx.length; j++) off[idx[j]] += v * val[j];
        }
      };
      add(this.terms, x);
      if (this.residual) {
        const [l0, l1, l2] = this.residual.layers;
        add(this.residual.directions, dense(l2, dense(l1, dense(l0, x, false), false), true));
      }
    }

    // Project every Gaussian into the camera (K [9] row-major at size x size, R [9], t [3]) as
    // rasterize.project does; fills this.instance for the visible ones, back to front. Returns the count.
    project(code, K, R, t, size) {
      const fx = K[0], fy = K[4], cx = K[2], cy = K[5];
      const limXPos = (size - cx) / fx + 0.3 * (0.5 * size / fx), limXNeg = cx / fx + 0.3 * (0.5 * size / fx);
      const limYPos = (size - cy) / fy + 0.3 * (0.5 * size / fy), limYNeg = cy / fy + 0.3 * (0.5 * size / fy);
      const N = this.N, M = this.M, off = this.offsets, f = this.face, m = this.mouth, K3 = this.mouthChannels.length;
      const out = this.instance, depth = this.depth, order = this.order;
      let visible = 0;
      const mouthCode = this.mouthChannels.map((c) => code[c]);
      const cov = new Float64Array(9), cc = new Float64Array(9), tmp = new Float64Array(9);
      for (let i = 0; i < N + M; i++) {
        let px, py, pz, qw, qx, qy, qz, s0, s1, s2, o, r, g, b;
        if (i < N) {
          const o10 = i * 10;
          px = f.means[i * 3] + off[o10]; py = f.means[i * 3 + 1] + off[o10 + 1]; pz = f.means[i * 3 + 2] + off[o10 + 2];
          qw = f.quats[i * 4] + off[o10 + 3]; qx = f.quats[i * 4 + 1] + off[o10 + 4];
          qy = f.quats[i * 4 + 2] + off[o10 + 5]; qz = f.quats[i * 4 + 3] + off[o10 + 6];
          s0 = Math.exp(f.logScales[i * 3] + off[o10 + 7]); s1 = Math.exp(f.logScales[i * 3 + 1] + off[o10 + 8]);
          s2 = Math.exp(f.logScales[i * 3 + 2] + off[o10 + 9]);
          o = f.opac[i]; r = f.colors[i * 3]; g = f.colors[i * 3 + 1]; b = f.colors[i * 3 + 2];
        } else {
          const k = i - N;
          px = m.means[k * 3]; py = m.means[k * 3 + 1]; pz = m.means[k * 3 + 2];
          for (let c = 0; c < K3; c++) {
            const w = mouthCode[c], base = (k * K3 + c) * 3;
            px += w * m.basis[base]; py += w * m.basis[base + 1]; pz += w * m.basis[base + 2];
          }
          qw = m.quats[k * 4]; qx = m.quats[k * 4 + 1]; qy = m.quats[k * 4 + 2]; qz = m.quats[k * 4 + 3];
          s0 = Math.exp(m.logScales[k * 3]); s1 = Math.exp(m.logScales[k * 3 + 1]); s2 = Math.exp(m.logScales[k * 3 + 2]);
          o = m.opac[k]; r = m.colors[k * 3]; g = m.colors[k * 3 + 1]; b = m.colors[k * 3 + 2];
        }
        if (o < ALPHA_MIN) continue;
        const tx = R[0] * px + R[1] * py + R[2] * pz + t[0];
        const ty = R[3] * px + R[4] * py + R[5] * pz + t[1];
        const tz = R[6] * px + R[7] * py + R[8] * pz + t[2];
        if (!(tz > NEAR_PLANE)) continue;
        // cov3d = (Rq S)(Rq S)^T, then in the camera: R cov3d R^T
        const q = quatToRot(qw, qx, qy, qz);
        for (let a = 0; a < 3; a++) { tmp[a * 3] = q[a * 3] * s0; tmp[a * 3 + 1] = q[a * 3 + 1] * s1; tmp[a * 3 + 2] = q[a * 3 + 2] * s2; }
        for (let a = 0; a < 3; a++) for (let c = 0; c < 3; c++)
          cov[a * 3 + c] = tmp[a * 3] * tmp[c * 3] + tmp[a * 3 + 1] * tmp[c * 3 + 1] + tmp[a * 3 + 2] * tmp[c * 3 + 2];
        for (let a = 0; a < 3; a++) for (let c = 0; c < 3; c++) // tmp = R cov
          tmp[a * 3 + c] = R[a * 3] * cov[c] + R[a * 3 + 1] * cov[3 + c] + R[a * 3 + 2] * cov[6 + c];
        for (let a = 0; a < 3; a++) for (let c = 0; c < 3; c++) // cc = tmp R^T
          cc[a * 3 + c] = tmp[a * 3] * R[c * 3] + tmp[a * 3 + 1] * R[c * 3 + 1] + tmp[a * 3 + 2] * R[c * 3 + 2];
        const z = tz;
        const txc = z * Math.min(Math.max(tx / z, -limXNeg), limXPos), tyc = z * Math.min(Math.max(ty / z, -limYNeg), limYPos);
        const j00 = fx / z, j02 = -fx * txc / (z * z), j11 = fy / z, j12 = -fy * tyc / (z * z);
        // cov2d = J cc J^T with J = [[j00, 0, j02], [0, j11, j12]]
        const a = j00 * (j00 * cc[0] + j02 * cc[2]) + j02 * (j00 * cc[6] + j02 * cc[8]) + EPS2D;
        const bb = j11 * (j00 * cc[1] + j02 * cc[7]) + j12 * (j00 * cc[2] + j02 * cc[8]);
        const c2 = j11 * (j11 * cc[4] + j12 * cc[5]) + j12 * (j11 * cc[7] + j12 * cc[8]) + EPS2D;
        const detRaw = a * c2 - bb * bb;
        if (!(detRaw > 0)) continue;
        const mx = fx * tx / z + cx, my = fy * ty / z + cy;
        const extend = Math.min(3.33, Math.sqrt(2 * Math.log(Math.max(o / ALPHA_MIN, 1))));
        const rx = Math.ceil(extend * Math.sqrt(a)), ry = Math.ceil(extend * Math.sqrt(c2));
        if (mx + rx <= 0 || mx - rx >= size || my + ry <= 0 || my - ry >= size || rx <= 0 || ry <= 0) continue;
        const det = Math.max(detRaw, 1e-10), w = visible * 12;
        out[w] = mx; out[w + 1] = my; out[w + 2] = rx; out[w + 3] = ry;
        out[w + 4] = c2 / det; out[w + 5] = -bb / det; out[w + 6] = a / det; out[w + 7] = o;
        out[w + 8] = r; out[w + 9] = g; out[w + 10] = b; out[w + 11] = 0;
        depth[visible] = tz; order[visible] = visible;
        visible++;
      }
      return visible;
    }

    // Draw one frame: `draw` is the frame header's draw object (viewer/PROTOCOL.md), drawn onto
    // this.canvas (draw.resolution squared). Resolves when the frame is on this.canvas.
    async draw(draw) {
      const baseBitmap = await this.base(draw.base);
      const t0 = performance.now();
      this.deform(draw.code);
      const t1 = performance.now();
      const [hx, hy, side, size] = draw.head, w = this.header.window, s = size / w.size, K0 = this.header.K;
      const K = [K0[0][0] * s, 0, K0[0][2] * s, 0, K0[1][1] * s, K0[1][2] * s, 0, 0, 1];
      const n = this.project(draw.code, K, draw.R, draw.t, size);
      const t2 = performance.now();
      // back to front: depth descending (ties: the later Gaussian first, the reverse of a stable ascending sort)
      const depth = this.depth, sorted = this.order.subarray(0, n).sort((i, j) => depth[j] - depth[i] || j - i);
      const rows = Math.max(1, Math.ceil((3 * n) / TEX_WIDTH)), packed = this.packed.subarray(0, rows * TEX_WIDTH * 4);
      for (let i = 0; i < n; i++) packed.set(this.instance.subarray(sorted[i] * 12, sorted[i] * 12 + 12), i * 12);
      const t3 = performance.now();
      this.drawGL(packed, n, baseBitmap, draw, size);
      Object.assign(this.stats, { visible: n, deform_ms: t1 - t0, project_ms: t2 - t1, sort_ms: t3 - t2, gl_ms: performance.now() - t3 });
      return this.canvas;
    }

    drawGL(packed, n, baseBitmap, draw, size) {
      const gl = this.gl, res = draw.resolution;
      if (this.headSize !== size) { // the head's framebuffer, premultiplied RGBA at the head's resolution
        gl.bindTexture(gl.TEXTURE_2D, this.headTex);
        gl.texImage2D(gl.TEXTURE_2D, 0, this.halfFloat ? gl.RGBA16F : gl.RGBA8, size, size, 0, gl.RGBA,
                      this.halfFloat ? gl.HALF_FLOAT : gl.UNSIGNED_BYTE, null);
        bilinear(gl);
        gl.bindFramebuffer(gl.FRAMEBUFFER, this.fbo);
        gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, this.headTex, 0);
        this.headSize = size;
      }
      gl.bindFramebuffer(gl.FRAMEBUFFER, this.fbo);
      gl.viewport(0, 0, size, size);
      gl.clearColor(0, 0, 0, 0); gl.clear(gl.COLOR_BUFFER_BIT);
      gl.enable(gl.BLEND); gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
      gl.useProgram(this.splat.p);
      gl.uniform2f(this.splat.u.u_size, size, size);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, this.splatTex);
      const rows = packed.length / (4 * TEX_WIDTH);
      if (rows > this.splatRows) {
        gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, TEX_WIDTH, rows, 0, gl.RGBA, gl.FLOAT, packed);
        for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.NEAREST], [gl.TEXTURE_MAG_FILTER, gl.NEAREST]]) gl.texParameteri(gl.TEXTURE_2D, k, v);
        this.splatRows = rows;
      } else {
        gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, TEX_WIDTH, rows, gl.RGBA, gl.FLOAT, packed);
      }
      gl.uniform1i(this.splat.u.u_splats, 0);
      gl.bindVertexArray(this.vao);
      gl.drawArrays(gl.TRIANGLES, 0, 6 * n);
      gl.bindVertexArray(null);

      // the base (crop of the frame, scaled to the output), then the head over it
      if (this.canvas.width !== res) { this.canvas.width = res; this.canvas.height = res; }
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.viewport(0, 0, res, res);
      gl.useProgram(this.quad.p);
      gl.uniform2f(this.quad.u.u_size, res, res);
      gl.activeTexture(gl.TEXTURE0);
      gl.uniform1i(this.quad.u.u_tex, 0);
      gl.bindTexture(gl.TEXTURE_2D, this.baseTex);
      if (this.baseShown !== draw.base) {
        gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, gl.RGBA, gl.UNSIGNED_BYTE, baseBitmap);
        bilinear(gl);
        this.baseShown = draw.base;
      }
      gl.bindVertexArray(this.vao);
      const F = this.header.frame_size, [x0, y0, cs] = draw.crop;
      gl.disable(gl.BLEND);
      gl.uniform1f(this.quad.u.u_clamp, 0);
      gl.uniform4f(this.quad.u.u_dst, 0, 0, res, res);
      gl.uniform4f(this.quad.u.u_src, x0 / F, y0 / F, cs / F, cs / F);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
      gl.enable(gl.BLEND); gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
      gl.bindTexture(gl.TEXTURE_2D, this.headTex);
      gl.uniform1f(this.quad.u.u_clamp, 1);
      const [hx, hy, side] = draw.head;
      gl.uniform4f(this.quad.u.u_dst, hx, hy, side, side);
      gl.uniform4f(this.quad.u.u_src, 0, 1, 1, -1); // the framebuffer's rows run bottom-up
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
      gl.bindVertexArray(null);
      gl.disable(gl.BLEND);
    }
  }

  // Fetch and parse an avatar file; progress(bytes, total) while it loads.
  async function load(url, progress) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`the baked avatar is not available: ${r.status} ${(await r.text()).slice(0, 200)}`);
    const total = Number(r.headers.get("Content-Length")) || 0, reader = r.body.getReader(), parts = [];
    let got = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value); got += value.length;
      if (progress) progress(got, total);
    }
    const buf = new Uint8Array(got);
    let at = 0;
    for (const p of parts) { buf.set(p, at); at += p.length; }
    const avatar = new BakedAvatar(parse(buf.buffer));
    avatar.bytes = got;
    return avatar;
  }

  return { parse, load, BakedAvatar };
})();

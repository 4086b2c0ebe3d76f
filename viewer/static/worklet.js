// avatar3d viewer: microphone capture in an AudioWorklet.
//
// Mixes the input to mono, low-passes and resamples it from the context's rate to 16 kHz with a
// windowed-sinc kernel (7.6 kHz cutoff, Hann window, 16 zero crossings each side), and posts
// chunks of `chunk` samples (320 = 20 ms) as Int16Array to the page, each with `lag`: seconds
// between the chunk's last sample entering the worklet and the post (the page dates samples with it).

const CUTOFF_HZ = 7600;
const ZERO_CROSSINGS = 16;

class Avatar3dCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.target = o.targetRate || 16000;
    this.chunk = o.chunk || 320;
    this.step = sampleRate / this.target; // input samples per output sample
    this.passthrough = Math.abs(this.step - 1) < 1e-9;
    const fc = Math.min(CUTOFF_HZ, 0.475 * this.target) / sampleRate; // cycles per input sample
    this.fc = fc;
    this.half = Math.ceil(ZERO_CROSSINGS / (2 * fc)); // kernel half-width, input samples
    this.hist = new Float32Array(0); // input samples not yet fully used
    this.histStart = 0; // input index of hist[0]
    this.inCount = 0; // input samples seen
    this.nextPos = 0; // input position (fractional) of the next output sample
    this.out = new Int16Array(this.chunk);
    this.outFill = 0;
  }

  kernel(x) {
    if (x === 0) return 2 * this.fc;
    if (Math.abs(x) >= this.half) return 0;
    const a = 2 * Math.PI * this.fc * x;
    const w = 0.5 + 0.5 * Math.cos((Math.PI * x) / this.half);
    return (Math.sin(a) / (Math.PI * x)) * w;
  }

  emit(v, inputIndexOfSample) {
    const s = Math.max(-1, Math.min(1, v));
    this.out[this.outFill++] = s < 0 ? s * 32768 : s * 32767;
    if (this.outFill === this.chunk) {
      const lag = (this.inCount - inputIndexOfSample) / sampleRate;
      this.port.postMessage({ pcm: this.out, lag }, [this.out.buffer]);
      this.out = new Int16Array(this.chunk);
      this.outFill = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const n = input[0].length;
    const mono = new Float32Array(n);
    for (const ch of input) for (let i = 0; i < n; i++) mono[i] += ch[i] / input.length;
    if (this.passthrough) {
      for (let i = 0; i < n; i++) { this.inCount++; this.emit(mono[i], this.inCount - 1); }
      return true;
    }
    const hist = new Float32Array(this.hist.length + n);
    hist.set(this.hist);
    hist.set(mono, this.hist.length);
    this.inCount += n;
    // an output sample at input position p needs inputs up to p + half
    while (this.nextPos + this.half < this.inCount) {
      const p = this.nextPos;
      const lo = Math.max(Math.ceil(p - this.half), this.histStart);
      const hi = Math.floor(p + this.half);
      let acc = 0;
      for (let j = lo; j <= hi; j++) acc += hist[j - this.histStart] * this.kernel(p - j);
      this.emit(acc, Math.min(hi, this.inCount - 1));
      this.nextPos += this.step;
    }
    const keepFrom = Math.max(this.histStart, Math.floor(this.nextPos - this.half) - 1);
    this.hist = hist.slice(keepFrom - this.histStart);
    this.histStart = keepFrom;
    return true;
  }
}

registerProcessor("avatar3d-capture", Avatar3dCapture);

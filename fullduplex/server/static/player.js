// Playback worklet: a queue of the model's audio (already resampled to the context's rate by the decoder), played as
// it arrives.
// It waits for a small cushion (startSamples) before it starts and after every underrun, so network jitter does
// not turn into clicks; it drops the oldest audio when the queue grows past maxSamples, so delay cannot pile up.
class FullduplexPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.startSamples = opts.startSamples || Math.round(0.08 * sampleRate);  // 80 ms at the context's rate
    this.maxSamples = opts.maxSamples || sampleRate;                         // 1 s
    this.chunks = [];
    this.offset = 0;        // read position inside chunks[0]
    this.queued = 0;        // samples waiting
    this.playing = false;
    this.underruns = 0;
    this.port.onmessage = (event) => {
      if (event.data === "reset") {
        this.chunks = []; this.offset = 0; this.queued = 0; this.playing = false;
        return;
      }
      const chunk = event.data;
      this.chunks.push(chunk);
      this.queued += chunk.length;
      while (this.queued > this.maxSamples && this.chunks.length > 1) {
        const dropped = this.chunks.shift();
        this.queued -= dropped.length - this.offset;
        this.offset = 0;
      }
    };
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.queued >= this.startSamples) this.playing = true;
    let written = 0;
    let energy = 0;
    while (this.playing && written < out.length && this.chunks.length) {
      const chunk = this.chunks[0];
      const n = Math.min(out.length - written, chunk.length - this.offset);
      for (let i = 0; i < n; i++) {
        const v = chunk[this.offset + i];
        out[written + i] = v;
        energy += v * v;
      }
      written += n;
      this.offset += n;
      this.queued -= n;
      if (this.offset >= chunk.length) { this.chunks.shift(); this.offset = 0; }
    }
    if (written < out.length) {
      out.fill(0, written);
      if (this.playing) { this.playing = false; this.underruns += 1; }
    }
    this.port.postMessage({ queued: this.queued, level: Math.sqrt(energy / out.length), underruns: this.underruns });
    return true;
  }
}

registerProcessor("fullduplex-player", FullduplexPlayer);

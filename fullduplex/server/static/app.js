// The fullduplex web page: microphone -> Ogg/Opus -> /api/chat, and the model's Ogg/Opus + text back.
// Wire protocol (docs/protocol.md): one kind byte per message; 0 handshake, 1 audio (Ogg pages), 2 text (UTF-8),
// 5 error (UTF-8, the server closes after it). Everything is served by the package itself: no CDN.
(function () {
  "use strict";

  // The wire carries 24 kHz audio. The AudioContext runs at the sound device's own rate (44.1 / 48 kHz usually):
  // the recorder resamples the microphone to 24 kHz before Opus, and the decoder resamples the model's 24 kHz audio
  // to the context's rate. Firefox refuses to connect a microphone to a context at another rate.
  const SAMPLE_RATE = 24000;
  const KIND = { HANDSHAKE: 0, AUDIO: 1, TEXT: 2, CONTROL: 3, METADATA: 4, ERROR: 5, PING: 6 };
  const VENDOR = "static/vendor/opus-recorder/";

  const $ = (id) => document.getElementById(id);
  const ui = {
    button: $("connect"), status: $("status"), statusText: $("status-text"), latency: $("latency"),
    notice: $("notice"), micLevel: $("mic-level"), modelLevel: $("model-level"), stats: $("stats"),
    transcript: $("transcript"), persona: $("persona"), textPrompt: $("text-prompt"), voicePrompt: $("voice-prompt"),
  };

  let conv = null; // the live conversation, or null

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.statusText.textContent = text;
  }

  function notify(text, kind) {
    ui.notice.textContent = text;
    ui.notice.className = "notice" + (kind === "info" ? " info" : "");
    ui.notice.hidden = !text;
  }

  function chatUrl() {
    const url = new URL("api/chat", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const token = new URLSearchParams(window.location.search).get("auth_token");
    if (token) url.searchParams.set("auth_token", token);
    // A persona (PersonaPlex's query parameters): sent only when the server offers personas.
    if (!ui.persona.hidden) {
      url.searchParams.set("text_prompt", ui.textPrompt.value.trim());
      url.searchParams.set("voice_prompt", ui.voicePrompt.value);
    }
    return url.toString();
  }

  function micErrorMessage(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "Microphone access was refused. Allow the microphone for this page (the icon in the address bar) " +
        "and start again." + (window.isSecureContext ? "" : " Browsers only allow it on https:// or localhost " +
        "pages: serve with --ssl DIR or reach the server through an SSH tunnel.");
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") return "No microphone was found.";
    if (name === "NotReadableError") return "The microphone is in use by another program.";
    return "The microphone could not be opened: " + (err && err.message ? err.message : String(err));
  }

  class Conversation {
    constructor() {
      this.sentSamples = 0;       // 24 kHz samples of microphone audio sent
      this.receivedSamples = 0;   // model audio decoded at the context rate, counted in 24 kHz samples
      this.textPieces = 0;
      this.queued = 0;            // samples waiting in the player
      this.closedByUs = false;
      this.live = false;
      this.errorText = null;
    }

    async start() {
      setStatus("connecting", "Opening the microphone…");
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error(micErrorMessage({ name: "SecurityError" }));
      }
      this.context = new AudioContext({ latencyHint: "interactive" }); // the device's rate
      this.rate = this.context.sampleRate;
      ui.stats.dataset.contextRate = String(this.rate);
      try {
        this.stream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
        });
      } catch (err) {
        throw new Error(micErrorMessage(err));
      }
      await this.context.resume();
      await this.context.audioWorklet.addModule("static/player.js");
      this.player = new AudioWorkletNode(this.context, "fullduplex-player", {
        outputChannelCount: [1],
        processorOptions: { startSamples: Math.round(0.08 * this.rate), maxSamples: this.rate }, // 80 ms, 1 s
      });
      this.player.connect(this.context.destination);
      this.player.port.onmessage = (event) => {
        this.queued = event.data.queued * SAMPLE_RATE / this.rate; // in 24 kHz samples, as the counters
        ui.modelLevel.value = Math.min(1, event.data.level * 4);
      };
      this.source = this.context.createMediaStreamSource(this.stream);
      this.analyser = this.context.createAnalyser();
      this.analyser.fftSize = 512;
      this.source.connect(this.analyser);

      this.decoder = new Worker(VENDOR + "decoderWorker.min.js");
      this.decoder.postMessage({
        command: "init", decoderSampleRate: SAMPLE_RATE, outputBufferSampleRate: this.rate, // resamples
        bufferLength: Math.round(0.04 * this.rate), resampleQuality: 3,
      });
      this.decoder.onmessage = (event) => {
        if (!event.data) return;
        const pcm = event.data[0];
        this.receivedSamples += pcm.length * SAMPLE_RATE / this.rate;
        this.player.port.postMessage(pcm, [pcm.buffer]);
      };

      setStatus("connecting", ui.persona.hidden ? "Connecting to the server…" : "Connecting (the persona's prompt runs first)…");
      this.ws = new WebSocket(chatUrl());
      this.ws.binaryType = "arraybuffer";
      this.ws.onmessage = (event) => this.onMessage(new Uint8Array(event.data));
      this.ws.onclose = (event) => this.onClose(event);
      this.ws.onerror = () => { /* the close event follows and says what happened */ };
      this.timer = setInterval(() => this.refresh(), 100);
    }

    startRecorder() {
      this.recorder = new Recorder({
        encoderPath: VENDOR + "encoderWorker.min.js",
        sourceNode: this.source,
        encoderSampleRate: SAMPLE_RATE, // resampled from the context's rate (resampleQuality below)
        encoderApplication: 2049,
        encoderFrameSize: 20,
        maxFramesPerPage: 2,       // a page every 40 ms: low latency
        numberOfChannels: 1,
        bufferLength: 960,
        resampleQuality: 3,
        streamPages: true,
      });
      this.recorder.ondataavailable = (page) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
        const message = new Uint8Array(page.length + 1);
        message[0] = KIND.AUDIO;
        message.set(page, 1);
        this.ws.send(message);
        this.sentSamples = Math.round(this.recorder.encodedSamplePosition / 2); // 48 kHz granule -> 24 kHz
      };
      return this.recorder.start();
    }

    onMessage(data) {
      if (!data.length) return;
      const kind = data[0];
      const payload = data.subarray(1);
      if (kind === KIND.HANDSHAKE) {
        this.live = true;
        this.startedAt = performance.now();
        setStatus("live", "Live — speak any time");
        notify("");
        this.startRecorder().catch((err) => this.fail(micErrorMessage(err)));
      } else if (kind === KIND.AUDIO) {
        const pages = payload.slice();
        this.decoder.postMessage({ command: "decode", pages: pages }, [pages.buffer]);
      } else if (kind === KIND.TEXT) {
        ui.transcript.textContent += new TextDecoder().decode(payload);
        this.textPieces += 1;
        ui.transcript.parentElement.scrollTop = ui.transcript.parentElement.scrollHeight;
      } else if (kind === KIND.ERROR) {
        this.errorText = new TextDecoder().decode(payload);
      } // control, metadata, ping and unknown kinds carry nothing the page needs
    }

    onClose(event) {
      const wasLive = this.live;
      this.stop(false);
      if (this.closedByUs) return;
      if (this.errorText) {
        const full = /busy|full/i.test(this.errorText);
        this.fail((full ? "The server is full: " : "The server ended the conversation: ") + this.errorText);
      } else if (!wasLive) {
        this.fail("Could not reach the server at " + chatUrl().replace(/auth_token=[^&]*/, "auth_token=…") +
          (event.code === 1006 ? " (connection refused or closed; is `fullduplex serve` running, and is the " +
          "auth token right?)" : " (code " + event.code + ")"));
      } else {
        this.fail("The connection to the server was lost (code " + event.code + ").");
      }
    }

    fail(text) {
      this.stop(false);
      setStatus("error", "Disconnected");
      notify(text);
      finish();
    }

    refresh() {
      if (this.analyser) {
        const buf = new Float32Array(this.analyser.fftSize);
        this.analyser.getFloatTimeDomainData(buf);
        let e = 0;
        for (const v of buf) e += v * v;
        ui.micLevel.value = Math.min(1, Math.sqrt(e / buf.length) * 4);
      }
      const sent = this.sentSamples / SAMPLE_RATE, received = this.receivedSamples / SAMPLE_RATE;
      ui.stats.dataset.sentSeconds = sent.toFixed(2);
      ui.stats.dataset.receivedSeconds = received.toFixed(2);
      ui.stats.dataset.textPieces = String(this.textPieces);
      ui.stats.textContent = `sent ${sent.toFixed(1)} s · received ${received.toFixed(1)} s · ${this.textPieces} words/pieces`;
      if (this.live && this.sentSamples > 0) {
        // What the user hears lags what they said by: audio still in flight or in the model, plus the playback queue.
        const delay = Math.max(0, this.sentSamples - this.receivedSamples + this.queued) / SAMPLE_RATE * 1000;
        ui.latency.textContent = `delay ${Math.round(delay)} ms`;
        ui.latency.dataset.level = delay < 300 ? "good" : delay < 700 ? "fair" : "poor";
        ui.latency.dataset.ms = String(Math.round(delay));
      }
    }

    stop(byUser) {
      if (byUser) this.closedByUs = true;
      clearInterval(this.timer);
      this.refresh();
      try { if (this.recorder) this.recorder.close(); } catch (e) { /* already closed */ }
      this.recorder = null;
      if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
      if (this.decoder) { this.decoder.terminate(); this.decoder = null; }
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
      if (this.context && this.context.state !== "closed") this.context.close();
      this.live = false;
      ui.micLevel.value = 0;
      ui.modelLevel.value = 0;
    }
  }

  function finish() {
    conv = null;
    ui.button.textContent = "Start conversation";
    ui.button.classList.remove("stop");
    ui.button.disabled = false;
  }

  ui.button.addEventListener("click", async () => {
    if (conv) {
      conv.stop(true);
      setStatus("idle", "Conversation ended");
      finish();
      return;
    }
    notify("");
    ui.transcript.textContent = "";
    conv = new Conversation();
    ui.button.textContent = "End conversation";
    ui.button.classList.add("stop");
    try {
      await conv.start();
    } catch (err) {
      if (conv) conv.fail(err.message || String(err));
    }
  });

  // The persona box: shown when the server lists voices or its model was trained with persona prompts.
  // With --auth-token the list needs the token too (the page's own ?auth_token=, as for the chat).
  const voicesUrl = new URL("api/voices", window.location.href);
  const pageToken = new URLSearchParams(window.location.search).get("auth_token");
  if (pageToken) voicesUrl.searchParams.set("auth_token", pageToken);
  fetch(voicesUrl).then((r) => (r.ok ? r.json() : null)).then((info) => {
    if (!info || (!info.voices.length && !info.persona_trained)) return;
    for (const name of info.voices) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      ui.voicePrompt.appendChild(option);
    }
    if (info.default_voice) ui.voicePrompt.value = info.default_voice;
    if (info.default_text) ui.textPrompt.value = info.default_text;
    ui.persona.hidden = false;
  }).catch(() => { /* an older server: no personas */ });

  if (typeof Recorder === "undefined" || !Recorder.isRecordingSupported()) {
    ui.button.disabled = true;
    notify("This browser cannot record audio with the Web Audio API; try a recent Chrome, Firefox or Edge.");
  }
})();

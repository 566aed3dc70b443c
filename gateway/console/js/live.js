// A WebSocket stream of the gateway (/api/v1/ws/{type}/{id}, docs/streams.md) that survives a lost
// connection: it shows its state, reconnects with backoff and resumes with ?since=<last cursor>, so
// frames sent while it was away arrive (within the server's replay window; a `gap` frame says when
// some could not be replayed).

import { token } from "./api.js";

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10000;
// The server's own close codes for requests it will never accept (docs/streams.md): no retry.
const FINAL_CLOSE_CODES = new Set([1003, 4400, 4404]);

/** Open streams of the page, so the header can show one connection state for all of them. */
export class StreamRegistry {
  constructor(onChange) {
    this.streams = new Set();
    this.onChange = onChange;
  }

  open(streamType, streamId, params, handlers) {
    const stream = new LiveStream(streamType, streamId, params, {
      ...handlers,
      onState: (state, detail) => {
        handlers.onState?.(state, detail);
        this.onChange(this.summary());
      },
    });
    this.streams.add(stream);
    stream.start();
    return stream;
  }

  summary() {
    const states = [...this.streams].filter((s) => s.state !== "closed").map((s) => s.state);
    if (!states.length) return { state: "idle", text: "no live streams" };
    if (states.every((s) => s === "live")) return { state: "live", text: `live (${states.length})` };
    if (states.some((s) => s === "failed")) return { state: "failed", text: "a stream was refused" };
    return { state: "reconnecting", text: "reconnecting…" };
  }

  closeAll() {
    for (const stream of this.streams) stream.close();
    this.streams.clear();
    this.onChange(this.summary());
  }
}

export class LiveStream {
  constructor(streamType, streamId, params = {}, { onFrame, onState } = {}) {
    this.streamType = streamType;
    this.streamId = streamId;
    this.params = params;
    this.onFrame = onFrame || (() => {});
    this.onStateChange = onState || (() => {});
    this.cursor = null;
    this.state = "connecting";
    this.socket = null;
    this.backoff = MIN_BACKOFF_MS;
    this.timer = null;
    this.closed = false;
  }

  url() {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(this.params)) {
      if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
    }
    if (this.cursor) query.set("since", this.cursor);
    // A browser cannot set headers on a WebSocket upgrade: the gateway takes the token as a
    // query parameter there (docs/security.md).
    if (token.get()) query.set("access_token", token.get());
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const path = `/api/v1/ws/${encodeURIComponent(this.streamType)}/${encodeURIComponent(this.streamId)}`;
    const text = query.toString();
    return `${scheme}://${location.host}${path}${text ? `?${text}` : ""}`;
  }

  setState(state, detail = "") {
    this.state = state;
    this.onStateChange(state, detail);
  }

  start() {
    if (this.closed) return;
    this.setState(this.cursor ? "reconnecting" : "connecting");
    const socket = new WebSocket(this.url());
    this.socket = socket;
    socket.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.cursor) this.cursor = frame.cursor;
      if (frame.type === "hello") {
        this.backoff = MIN_BACKOFF_MS;
        this.setState("live");
      }
      this.onFrame(frame);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.closed) return;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        this.setState("failed", event.reason || `closed with code ${event.code}`);
        return;
      }
      this.setState("reconnecting", event.reason || "connection lost");
      this.timer = setTimeout(() => this.start(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    };
    // onerror is always followed by onclose, which decides what to do.
    socket.onerror = () => {};
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "page closed");
    this.socket = null;
    this.setState("closed");
  }
}

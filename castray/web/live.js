// The /ws connection: a snapshot, then numbered events; reconnects, and starts over from a
// fresh snapshot whenever events were lost (a gap in seq, or the server said it dropped some).

import { api, token } from "./api.js";

const UNAUTHORIZED = 4401; // the server's close code for a missing or wrong token

export class LiveFeed {
  constructor({ onSnapshot, onEvent, onState }) {
    this.onSnapshot = onSnapshot;
    this.onEvent = onEvent;
    this.onState = onState;
    this.seq = 0;
    this.retry = 500;
    this.failures = 0; // connections in a row that never opened
    this.socket = null;
  }

  start() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    // The token goes in the first message, never in the URL (URLs end up in logs).
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.failures = 0;
      const saved = token();
      if (saved) socket.send(JSON.stringify({ type: "auth", token: saved }));
    };
    socket.onmessage = (message) => this.receive(JSON.parse(message.data));
    socket.onclose = (event) => {
      if (!opened) this.failures += 1;
      this.onState(false, this.failures);
      const delay = this.retry;
      this.retry = Math.min(Math.max(this.retry * 2, 500), 10000);
      const refused = !opened || event.code === UNAUTHORIZED;
      setTimeout(() => (refused ? this.checkAccessThenStart() : this.start()), delay);
    };
  }

  /** Before (re)opening after a refused handshake: a 401 asks for the token (api does). */
  async checkAccessThenStart() {
    try {
      await api("GET", "/api/status");
    } catch {
      // The server is away or still refuses; try again later.
    }
    this.start();
  }

  receive(message) {
    if (message.type === "snapshot") {
      this.seq = message.seq;
      this.retry = 500;
      this.onState(true);
      this.onSnapshot(message.data);
      return;
    }
    if (message.type === "heartbeat") return;
    if (message.type === "events_dropped") { this.resync(); return; }
    if (message.seq <= this.seq) return; // already part of the snapshot
    if (message.seq !== this.seq + 1) { this.resync(); return; }
    this.seq = message.seq;
    this.onEvent(message.type, message.data, message.at);
  }

  resync() {
    this.retry = 0;
    this.socket.close();
  }
}

// A small line chart of aggregate throughput, one bucket per second, drawn on a canvas.

import { rate } from "./format.js";

export class ThroughputChart {
  constructor(canvas, seconds = 300) {
    this.canvas = canvas;
    this.seconds = seconds;
    this.buckets = new Map(); // whole second -> bytes
  }

  add(byteCount, at = Date.now() / 1000) {
    if (byteCount <= 0) return;
    const second = Math.floor(at);
    this.buckets.set(second, (this.buckets.get(second) || 0) + byteCount);
  }

  /** Bytes per second over the last few whole seconds. */
  current(window = 3) {
    const now = Math.floor(Date.now() / 1000);
    let sum = 0;
    for (let s = now - window; s < now; s += 1) sum += this.buckets.get(s) || 0;
    return sum / window;
  }

  draw() {
    const now = Math.floor(Date.now() / 1000);
    for (const second of this.buckets.keys()) {
      if (second < now - this.seconds) this.buckets.delete(second);
    }
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth || this.canvas.width;
    const height = this.canvas.clientHeight || this.canvas.height;
    this.canvas.width = width * ratio;
    this.canvas.height = height * ratio;
    const ctx = this.canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const values = [];
    for (let s = now - this.seconds; s <= now; s += 1) values.push(this.buckets.get(s) || 0);
    const highest = Math.max(...values);
    const peak = Math.max(highest, 1);
    const left = 4;
    const bottom = height - 16;
    ctx.strokeStyle = "#e3e6eb";
    ctx.beginPath();
    ctx.moveTo(left, bottom + 0.5);
    ctx.lineTo(width, bottom + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#687385";
    ctx.font = "11px system-ui, sans-serif";
    const quiet = `no traffic in the last ${this.seconds / 60} min`;
    ctx.fillText(highest ? `peak ${rate(highest)}` : quiet, left, 11);
    ctx.fillText(`${this.seconds / 60} min ago`, left, height - 3);
    ctx.textAlign = "right";
    ctx.fillText("now", width - 2, height - 3);
    const step = (width - left) / (values.length - 1);
    ctx.beginPath();
    values.forEach((value, i) => {
      const x = left + i * step;
      const y = bottom - (value / peak) * (bottom - 16);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = "#2458c6";
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(width, bottom);
    ctx.lineTo(left, bottom);
    ctx.fillStyle = "rgb(36 88 198 / 0.12)";
    ctx.fill();
  }
}


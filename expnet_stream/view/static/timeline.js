// Per-track emotion timeline of the last 60 s, drawn on a canvas from the frame events pushed to the page.
// Class names and track ids come from events: they are drawn with fillText (never parsed as HTML).
"use strict";
class Timeline {
  constructor(canvas, seconds) {
    this.canvas = canvas;
    this.seconds = seconds || 60;
    this.tracks = new Map(); // track id -> [{t, top, p}]
    this.latest = 0;
    this.maxTracks = 32;
    this.maxPoints = 3000;
  }
  add(frame) {
    const t = frame.capture_time;
    this.latest = Math.max(this.latest, t);
    for (const f of frame.faces) {
      const top = f.smooth_top || f.top, p = f.smooth_top ? f.smooth_p : f.p;
      if (f.track < 0 || !top) continue;
      let pts = this.tracks.get(f.track);
      if (!pts) {
        pts = [];
        this.tracks.set(f.track, pts);
        if (this.tracks.size > this.maxTracks) {
          const oldest = [...this.tracks.entries()].sort((a, b) => last(a[1]) - last(b[1]))[0][0];
          this.tracks.delete(oldest);
        }
      }
      pts.push({t, top, p: p || 0});
      if (pts.length > this.maxPoints) pts.splice(0, pts.length - this.maxPoints);
    }
    function last(p) { return p.length ? p[p.length - 1].t : 0; }
  }
  prune() {
    const from = this.latest - this.seconds;
    for (const [id, pts] of this.tracks) {
      let i = 0;
      while (i < pts.length && pts[i].t < from) i++;
      if (i) pts.splice(0, i);
      if (!pts.length) this.tracks.delete(id);
    }
  }
  draw() {
    this.prune();
    const c = this.canvas;
    const left = 48, right = 8, top = 6, axis = 18, legend = 22, laneH = 36;
    const ids = [...this.tracks.keys()].sort((a, b) => a - b).slice(-8);
    const height = top + Math.max(1, ids.length) * laneH + axis + legend;
    if (c.height !== height) c.height = height; // one lane per track (up to 8), no empty space below
    const g = c.getContext("2d");
    const W = c.width, H = c.height;
    g.clearRect(0, 0, W, H);
    const plotW = W - left - right;
    const from = this.latest - this.seconds;
    const x = (t) => left + ((t - from) / this.seconds) * plotW;
    const seen = new Set();
    let points = 0;
    g.font = "12px sans-serif";
    ids.forEach((id, lane) => {
      const y0 = top + lane * laneH;
      g.fillStyle = "#1d2024";
      g.fillRect(left, y0 + 1, plotW, laneH - 2);
      g.fillStyle = "#cfd3d7";
      g.fillText(`#${id}`, 4, y0 + laneH / 2 + 4);
      for (const pt of this.tracks.get(id)) {
        const h = Math.max(2, pt.p * (laneH - 4));
        g.fillStyle = View.colour(pt.top);
        g.fillRect(x(pt.t) - 1, y0 + laneH - 2 - h, 3, h);
        seen.add(pt.top);
        points++;
      }
    });
    const ay = top + ids.length * laneH + 12;
    g.fillStyle = "#9aa0a6";
    for (let s = 0; s <= this.seconds; s += 10) {
      g.fillText(s === this.seconds ? "now" : `-${this.seconds - s} s`, x(from + s) - 12, ay);
    }
    let lx = left;
    for (const name of [...seen].sort()) {
      g.fillStyle = View.colour(name);
      g.fillRect(lx, ay + 6, 10, 10);
      g.fillStyle = "#cfd3d7";
      const label = name.slice(0, 24);
      g.fillText(label, lx + 14, ay + 15);
      lx += 24 + g.measureText(label).width;
    }
    c.dataset.points = String(points);
    c.dataset.tracks = String(ids.length);
  }
}

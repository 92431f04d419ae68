// A stream's page: its live picture (MJPEG), faces now, latest window, and the per-track emotion timeline, kept
// current by the events the view pushes (Server-Sent Events).
"use strict";
(() => {
  const id = View.params.get("id");
  const title = document.getElementById("stream-id");
  const stateEl = document.getElementById("state");
  const reasonEl = document.getElementById("end-reason");
  const img = document.getElementById("picture");
  const note = document.getElementById("picture-note");
  const facesEl = document.getElementById("faces");
  const aggEl = document.getElementById("aggregate");
  const rowEl = document.getElementById("row");
  document.getElementById("back").href = View.url("/");
  if (!id) { title.textContent = "no stream given (?id=)"; return; }
  title.textContent = id;
  document.title = `${id} · expnet-stream view`;
  const timeline = new Timeline(document.getElementById("timeline"), 60);
  let state = null;

  function showPicture() {
    img.src = View.url("/api/stream/picture.mjpg", {id, t: Date.now()});
  }
  img.addEventListener("error", () => {
    note.textContent = "picture unavailable (the view's limits may be full: see /api/status); retrying in 5 s";
    setTimeout(showPicture, 5000);
  });
  showPicture();

  function setState(s, reason) {
    if (!s) return;
    state = s;
    View.stateBadge(stateEl, s);
    reasonEl.textContent = reason ? `(${reason})` : "";
    if (s === "ended") note.textContent = `the stream has ended${reason ? ` (${reason})` : ""}`;
    else if (s === "idle") note.textContent = "the stream is idle: no events for a while";
    else if (s === "forgotten") note.textContent = "the stream is gone from the view (not heard of for minutes)";
    else note.textContent = "";
  }
  function showFaces(frame) {
    const items = frame.faces.map((f) => {
      const li = View.el("li");
      const sw = View.el("span", "■");
      sw.style.color = View.colour(f.top);
      li.appendChild(sw);
      const who = f.track >= 0 ? `#${f.track}` : "face";
      li.appendChild(View.el("span", f.top ? ` ${who} ${f.top} ${View.fmt(f.p, 2)}` : ` ${who} (no emotions)`,
        "emotion-label"));
      return li;
    });
    if (!items.length) items.push(View.el("li", "no face in the latest frame", "muted"));
    facesEl.replaceChildren(...items);
  }
  function showAggregate(a) {
    if (a.track >= 0) return;
    const parts = [View.el("p", `window [${View.fmt(a.window[0], 1)}, ${View.fmt(a.window[1], 1)}) s: ` +
      `${a.frames} frames, ${a.faces} faces${a.partial ? " (partial)" : ""}`)];
    const dom = View.el("p");
    dom.appendChild(View.el("strong", a.dominant || "no dominant emotion"));
    dom.appendChild(View.el("span", a.dominant_share === null ? "" :
      ` · share ${View.fmt(a.dominant_share, 2)} · stability ${View.fmt(a.stability, 2)}`));
    dom.id = "dominant";
    parts.push(dom);
    for (const [name, p] of Object.entries(a.emotions).sort((x, y) => y[1] - x[1])) {
      const bar = View.el("div", null, "bar");
      bar.appendChild(View.el("span", name));
      const fill = View.el("span", null, "fill");
      fill.style.width = `${Math.round(160 * p)}px`;
      fill.style.background = View.colour(name);
      bar.appendChild(fill);
      bar.appendChild(View.el("span", View.fmt(p, 2)));
      parts.push(bar);
    }
    aggEl.replaceChildren(...parts);
  }
  function showRow(r) {
    if (!r) return;
    setState(r.state, r.end_reason);
    const items = [["frames/s", View.fmt(r.fps, 1)], ["faces now", r.faces], ["lag", r.lag_s === null ? "–" :
      `${View.fmt(r.lag_s, 2)} s`], ["frames", r.frames], ["size", `${r.size[0]}×${r.size[1]}`],
      ["last event", `${View.fmt(r.last_seen_s, 0)} s ago`]];
    rowEl.replaceChildren(...items.flatMap(([k, v]) => [View.el("dt", k), View.el("dd", v)]));
  }

  const source = new EventSource(View.url("/api/stream/events", {id}));
  source.addEventListener("snapshot", (e) => {
    const d = JSON.parse(e.data);
    if (!d) { setState("unknown"); note.textContent = "no events of this stream yet"; return; }
    for (const f of d.timeline) timeline.add(f);
    if (d.timeline.length) showFaces(d.timeline[d.timeline.length - 1]);
    for (const a of d.aggregates) showAggregate(a);
    showRow(d.row);
    timeline.draw();
  });
  source.addEventListener("frame", (e) => {
    const f = JSON.parse(e.data);
    timeline.add(f);
    showFaces(f);
    if (state !== "live") setState("live");
  });
  source.addEventListener("aggregate", (e) => showAggregate(JSON.parse(e.data)));
  source.addEventListener("state", (e) => { const s = JSON.parse(e.data); setState(s.state, s.end_reason); });
  source.addEventListener("row", (e) => showRow(JSON.parse(e.data)));
  source.addEventListener("error", () => { note.textContent = "event stream interrupted; reconnecting…"; });
  setInterval(() => timeline.draw(), 250);
})();

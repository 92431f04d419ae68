// Shared by the pages. Everything from events goes into the page as text (textContent), never as HTML.
"use strict";
const View = (() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  // BGR colours of expnet_stream/video/draw.py (EMOTION_BGR), as CSS rgb()
  const BGR = {anger: [40, 40, 220], contempt: [140, 140, 0], disgust: [40, 150, 40], fear: [170, 60, 170],
    happiness: [0, 210, 255], neutral: [190, 190, 190], sadness: [210, 120, 30], surprise: [0, 130, 255]};
  function crc(name) { let h = 0; for (const c of name) { h = (h * 31 + c.charCodeAt(0)) >>> 0; } return h; }
  function colour(name) {
    if (!name) return "rgb(255,255,255)";
    const bgr = BGR[name] || (() => { const h = crc(name); return [64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192]; })();
    return `rgb(${bgr[2]},${bgr[1]},${bgr[0]})`;
  }
  function url(path, query) {
    const q = new URLSearchParams(query || {});
    if (token) q.set("token", token);
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
  function stateBadge(e, state) {
    e.textContent = state || "unknown";
    e.className = `state state-${["live", "idle", "ended", "forgotten"].includes(state) ? state : "unknown"}`;
  }
  return {params, token, colour, url, el, fmt, stateBadge};
})();

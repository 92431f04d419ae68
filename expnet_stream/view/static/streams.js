// The streams page: the stream table, refreshed every second.
"use strict";
(() => {
  const body = document.querySelector("#streams tbody");
  const status = document.getElementById("status");
  const empty = document.getElementById("empty");
  async function refresh() {
    try {
      const res = await fetch(View.url("/api/streams"), {cache: "no-store"});
      if (!res.ok) { status.textContent = `error ${res.status}: ${await res.text()}`; return; }
      const data = await res.json();
      const rows = data.streams.map((s) => {
        const tr = View.el("tr");
        tr.dataset.stream = s.stream;
        const a = View.el("a", s.stream);
        a.href = View.url("/stream", {id: s.stream});
        const name = View.el("td"); name.appendChild(a); tr.appendChild(name);
        const st = View.el("td"); const badge = View.el("span"); View.stateBadge(badge, s.state);
        st.appendChild(badge); tr.appendChild(st);
        tr.appendChild(View.el("td", View.fmt(s.fps, 1)));
        tr.appendChild(View.el("td", s.faces));
        tr.appendChild(View.el("td", s.dominant || "–"));
        tr.appendChild(View.el("td", s.lag_s === null ? "–" : `${View.fmt(s.lag_s, 2)} s`));
        tr.appendChild(View.el("td", `${View.fmt(s.last_seen_s, 0)} s ago`));
        tr.appendChild(View.el("td", `${s.size[0]}×${s.size[1]}`));
        return tr;
      });
      body.replaceChildren(...rows);
      empty.hidden = rows.length > 0;
      status.textContent = `${rows.length} streams · ${data.view.watched.length} watched · ${data.view.clients} clients`;
    } catch (err) {
      status.textContent = `view unreachable (${err})`;
    }
  }
  refresh();
  setInterval(refresh, 1000);
})();

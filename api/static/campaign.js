"use strict";
(async () => {
  const me = await whoami();
  if (!me) return;
  const id = location.pathname.split("/").pop();
  document.getElementById("page").hidden = false;
  const may = (p) => me.permissions.includes(p);
  const SERIES = [["sent", "#3c7be0"], ["failed", "#d9423a"], ["delivered", "#2aa876"], ["read", "#9b59b6"]];

  for (const action of ["pause", "resume", "cancel"]) {
    document.getElementById(action).onclick = async () => {
      document.getElementById("action-error").textContent = "";
      try { await api("POST", `/v1/campaigns/${id}/${action}`); }
      catch (error) { document.getElementById("action-error").textContent = error.message; }
    };
  }

  function chart(windows) {
    const svg = document.getElementById("chart");
    const W = 760, H = 240, left = 40, bottom = 20, top = 10;
    const max = Math.max(1, ...windows.flatMap((w) => SERIES.map(([k]) => w[k])));
    const step = windows.length ? (W - left - 10) / windows.length : 0;
    const bar = Math.max(1, step / (SERIES.length + 1));
    const y = (v) => H - bottom - (H - bottom - top) * v / max;
    const nodes = [];
    const ns = "http://www.w3.org/2000/svg";
    const make = (tag, attrs, text) => { const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text !== undefined) n.textContent = text; return n; };
    nodes.push(make("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, stroke: "#999" }));
    nodes.push(make("text", { x: 2, y: top + 10, "font-size": 10 }, String(max)));
    nodes.push(make("text", { x: 2, y: H - bottom, "font-size": 10 }, "0"));
    windows.forEach((w, i) => {
      SERIES.forEach(([k, color], j) => {
        const x = left + i * step + j * bar;
        nodes.push(make("rect", { x, y: y(w[k]), width: bar, height: H - bottom - y(w[k]), fill: color,
                                  class: "bar-" + k, "data-window": w.start, "data-value": w[k] }));
      });
      if (i % Math.ceil(windows.length / 6) === 0) nodes.push(make("text", { x: left + i * step, y: H - 4,
        "font-size": 10 }, new Date(w.start).toLocaleTimeString()));
    });
    svg.replaceChildren(...nodes);
  }

  stream(`/v1/stream/campaigns/${id}`, (snapshot) => {
    const c = snapshot.campaign;
    if (!c) return;
    document.getElementById("name").textContent = c.name;
    const status = document.getElementById("status");
    status.textContent = c.status;
    status.className = "state state-" + c.status;
    document.getElementById("meta").textContent = `${c.channel}, by ${c.created_by}`;
    const owner = c.created_by === me.principal || may("campaigns.manage_any");
    const can = may("campaigns.send") && owner;
    document.getElementById("pause").hidden = !(can && ["scheduled", "active"].includes(c.status));
    document.getElementById("resume").hidden = !(can && c.status === "paused");
    document.getElementById("cancel").hidden = !(can && ["draft", "scheduled", "active", "paused"].includes(c.status));
    const cards = [["progress", pct(c.progress)], ["processed", c.processed + " / " + (c.expected || "?")],
      ["sent", c.counts.sent], ["failed", c.counts.failed], ["send rate /s", c.send_rate.toFixed(1)],
      ["failure rate", pct(c.failure_rate)], ["retries", c.retries], ["dead letters", c.dead_letters],
      ["skipped", c.counts.skipped], ["cancelled", c.counts.cancelled], ["delivered", c.counts.delivered],
      ["read", c.counts.read]];
    document.getElementById("cards").replaceChildren(...cards.map(([k, v]) =>
      el("div", { class: "card", "data-key": k }, el("div", { class: "v" }, v), el("div", { class: "k" }, k))));
    document.getElementById("window-s").textContent = snapshot.window_s;
    chart(snapshot.windows);
    document.getElementById("live").textContent = "live, " + new Date(snapshot.at).toLocaleTimeString();
  }, (state) => { document.getElementById("live").textContent = state; });
})();

"use strict";
(async () => {
  const me = await whoami();
  if (!me) return;
  const table = document.getElementById("campaigns");
  table.hidden = false;
  stream("/v1/stream/campaigns", (snapshot) => {
    const body = table.querySelector("tbody");
    body.replaceChildren(...snapshot.campaigns.map((c) => el("tr", { "data-id": c.id, "data-status": c.status },
      el("td", {}, el("a", { href: "/campaigns/" + c.id, class: "name" }, c.name)),
      el("td", {}, c.channel),
      el("td", {}, el("span", { class: "state state-" + c.status }, c.status)),
      el("td", {}, el("span", { class: "bar" }, el("span", { style: "width:" + pct(c.progress) })), " ", pct(c.progress)),
      el("td", { class: "num processed" }, c.processed + " / " + (c.expected || "?")),
      el("td", { class: "num sent" }, c.counts.sent),
      el("td", { class: "num failed" }, c.counts.failed),
      el("td", { class: "num rate" }, c.send_rate.toFixed(1)),
      el("td", { class: "num failure-rate" }, pct(c.failure_rate)),
      el("td", { class: "num retries" }, c.retries),
      el("td", { class: "num dead-letters" }, c.dead_letters))));
    document.getElementById("live").textContent = "live, " + new Date(snapshot.at).toLocaleTimeString();
  }, (state) => { document.getElementById("live").textContent = state; });
})();

// The dashboard's shared code: the API token (kept in this tab's sessionStorage, sent as a bearer token, never
// in a cookie), JSON calls, and server-sent events read with fetch (EventSource cannot send an Authorization
// header). No build step, no library.
"use strict";
const TOKEN_KEY = "campaigns.token";

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function showLogin(message) {
  const box = document.getElementById("login");
  box.hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("login-form").onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    location.reload();
  };
}

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + token() };
  const init = { method, headers };
  if (method === "POST") {
    headers["Content-Type"] = "application/json";
    headers["Idempotency-Key"] = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showLogin(data.detail); }
  if (!response.ok) { throw new Error(data.detail || response.statusText); }
  return data;
}

// Calls onSnapshot(object) for every `event: snapshot` of an SSE stream; reconnects after a drop.
async function stream(path, onSnapshot, onState) {
  for (;;) {
    try {
      const response = await fetch(path, { headers: { "Authorization": "Bearer " + token(),
                                                      "Accept": "text/event-stream" } });
      if (response.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showLogin("token refused"); return; }
      if (!response.ok) { onState("error " + response.status); await sleep(3000); continue; }
      onState("live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (event === "snapshot" && data) onSnapshot(JSON.parse(data));
        }
      }
    } catch (error) { onState("reconnecting"); }
    await sleep(2000);
  }
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function pct(x) { return (100 * x).toFixed(1) + "%"; }

async function whoami() {
  if (!token()) { showLogin(); return null; }
  try {
    const me = await api("GET", "/v1/me");
    document.getElementById("who").textContent = me.principal;
    return me;
  } catch (error) { showLogin(error.message); return null; }
}

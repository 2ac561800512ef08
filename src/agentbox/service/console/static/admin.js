// Admin: tokens (create, shown once; revoke), pools and their fill, the audit log.
import { api, el, say } from "/static/console.js";

async function tokens() {
  const list = await api.get("/v1/tokens");
  const body = document.querySelector("#tokens tbody");
  body.replaceChildren();
  for (const t of list.tokens) {
    const revoke = el("button", { type: "button", class: "danger", "aria-label": `Revoke ${t.name}` }, "Revoke");
    revoke.addEventListener("click", async () => {
      if (!confirm(`Revoke token ${t.name}? Its sandboxes stay.`)) return;
      try { await api.del(`/v1/tokens/${encodeURIComponent(t.name)}`); say(`Revoked ${t.name}`); refresh(); }
      catch (e) { say(`revoke: ${e.message}`, true); }
    });
    body.append(el("tr", { "data-name": t.name }, el("td", {}, t.name), el("td", {}, t.admin ? "yes" : "no"),
      el("td", {}, t.created), el("td", {}, revoke)));
  }
}

async function pools() {
  const text = await (await fetch("/metrics")).text();
  const found = new Map();
  for (const line of text.split("\n")) {
    const m = /^agentbox_pool_(size|free)\{pool="([^"]*)"\} ([0-9.e+]+)/.exec(line);
    if (m) found.set(m[2], { ...(found.get(m[2]) || {}), [m[1]]: Number(m[3]) });
  }
  const body = document.querySelector("#pools tbody");
  body.replaceChildren();
  for (const [name, p] of found) body.append(el("tr", {}, el("td", {}, name), el("td", {}, p.size ?? "–"), el("td", {}, p.free ?? "–")));
  if (!found.size) body.append(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "No pools configured.")));
}

async function audit() {
  const log = await api.get("/v1/audit?limit=200");
  const body = document.querySelector("#audit tbody");
  body.replaceChildren();
  for (const e of log.entries) {
    body.append(el("tr", {}, el("td", {}, e.at), el("td", {}, e.actor), el("td", {}, e.action), el("td", {}, e.target),
      el("td", {}, e.detail)));
  }
}

function refresh() {
  tokens().catch((e) => say(`tokens: ${e.message}`, true));
  pools().catch((e) => say(`pools: ${e.message}`, true));
  audit().catch((e) => say(`audit: ${e.message}`, true));
}

document.getElementById("token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = document.getElementById("token-name");
  const error = document.getElementById("e-token-name");
  error.textContent = "";
  name.removeAttribute("aria-invalid");
  try {
    const made = await api.post("/v1/tokens", { name: name.value.trim(), admin: document.getElementById("token-admin").checked });
    document.getElementById("new-token").hidden = false;
    const value = document.getElementById("new-token-value");
    value.value = made.token;
    value.select();
    name.value = "";
    refresh();
  } catch (e) {
    error.textContent = e.message;
    name.setAttribute("aria-invalid", "true");
    name.focus();
  }
});

refresh();

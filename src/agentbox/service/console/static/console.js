// The console's one way to talk to the service: the public /v1 API, with the sign-in cookie and the
// CSRF header the API asks of cookie requests (see agentbox/service/console/session.py).

const CSRF_HEADER = document.body.dataset.csrfHeader || "x-agentbox-csrf";

function csrf() {
  const m = document.cookie.match(/(?:^|;\s*)agentbox_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

export class ApiError extends Error {
  constructor(status, code, message, rule) {
    super(message);
    this.status = status;
    this.code = code;
    this.rule = rule;
  }
}

/** fetch() against the service with the console's credentials; a 401 sends the user to sign in. */
export async function request(method, path, { body, headers = {}, raw = false } = {}) {
  const h = { [CSRF_HEADER]: csrf(), ...headers };
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && !(body instanceof ArrayBuffer) && typeof body !== "string") {
    h["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers: h, body: payload, credentials: "same-origin" });
  if (response.status === 401) {
    location.href = "/signin?next=" + encodeURIComponent(location.pathname);
    throw new ApiError(401, "unauthorized", "signed out");
  }
  if (!response.ok) {
    let code = "error", message = response.statusText, rule;
    try {
      const err = await response.json();
      const e = err.error || err; // the service's {error: {code, message}}, the runtime's {code, message}
      code = e.code || code; message = e.message || message; rule = e.rule;
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, code, message, rule);
  }
  return raw ? response : (response.headers.get("content-type") || "").includes("json") ? response.json() : response.text();
}

export const api = {
  get: (path, opts) => request("GET", path, opts),
  post: (path, body, opts = {}) => request("POST", path, { ...opts, body }),
  put: (path, body, opts = {}) => request("PUT", path, { ...opts, body }),
  del: (path, opts) => request("DELETE", path, opts),
};

/** The runtime server's API of one sandbox, through the service's proxy. */
export function runtime(id, path) {
  return `/v1/sandboxes/${encodeURIComponent(id)}/runtime/${path}`;
}

/**
 * Read a server-sent event stream with fetch (EventSource cannot send the CSRF header).
 * Calls onEvent(name, data) per event; reconnects after a drop until the returned stop() is called.
 */
export function events(method, path, { body, headers = {}, onEvent, onOpen, onClose, reconnect = true }) {
  let stopped = false;
  const controller = new AbortController();
  async function once() {
    const h = { [CSRF_HEADER]: csrf(), accept: "text/event-stream", ...headers };
    let payload;
    if (body !== undefined) { h["content-type"] = "application/json"; payload = JSON.stringify(body); }
    const response = await fetch(path, { method, headers: h, body: payload, signal: controller.signal });
    if (response.status === 401) { location.href = "/signin"; return; }
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.includes("text/event-stream")) {
      let err = {};
      try { err = await response.json(); } catch (_) { /* not JSON */ }
      onEvent("error", JSON.stringify(err), response.status);
      return false;
    }
    onOpen && onOpen();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message", data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, data.join("\n"), response.status);
      }
    }
    return true;
  }
  (async () => {
    let delay = 500;
    while (!stopped) {
      try { await once(); delay = 500; } catch (e) { if (stopped) break; }
      onClose && onClose();
      if (!reconnect || stopped) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  })();
  return () => { stopped = true; controller.abort(); };
}

/** Say something to screen-reader users and everyone else (the page's live region). */
export function say(text, isError = false) {
  const el = document.getElementById("status");
  if (!el) return;
  el.textContent = text;
  el.classList.toggle("error", isError);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function percent(x) {
  return x === null || x === undefined ? "–" : `${x.toFixed(1)} %`;
}

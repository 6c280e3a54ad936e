// Talking to the Stanch API: who is signed in, requests with their credentials, and
// server-sent event streams read with fetch() (EventSource cannot send Authorization).

const STORE = "stanch.board.identity";

// --- identity -------------------------------------------------------------------------------
// { mode: "token", token, user, roles }  or  { mode: "insecure-dev", user, roles }
// Kept in sessionStorage: this tab only, gone when it closes.

export const identity = {
  load() {
    try { return JSON.parse(sessionStorage.getItem(STORE) || "null"); } catch { return null; }
  },
  save(value) { sessionStorage.setItem(STORE, JSON.stringify(value)); },
  clear() { sessionStorage.removeItem(STORE); },
};

export function parseRoles(text) {
  return [...new Set(String(text || "").split(/[\s,]+/).map((r) => r.trim()).filter(Boolean))];
}

function authHeaders(who = identity.load()) {
  if (!who) return {};
  if (who.mode === "token") return who.token ? { Authorization: `Bearer ${who.token}` } : {};
  // Development mode: the API takes the responder's word for who they are.
  const headers = {};
  if (who.user) headers["X-Stanch-User"] = who.user;
  if (who.roles?.length) headers["X-Stanch-Roles"] = who.roles.join(",");
  return headers;
}

// --- requests -------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

// The API's own words for a failure: `detail` as it sent it (a string), or each field
// problem of a 422 as "field: message".
export function detailOf(status, body, text) {
  const detail = body && typeof body === "object" ? body.detail : undefined;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
  }
  if (detail !== undefined) return JSON.stringify(detail);
  return (text || "").trim() || `HTTP ${status}`;
}

export async function api(path, { method = "GET", body, who, signal } = {}) {
  const headers = { Accept: "application/json", ...authHeaders(who) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal, credentials: "same-origin" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `cannot reach the Stanch API: ${error.message}`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) throw new ApiError(response.status, detailOf(response.status, data, text));
  return data;
}

// A fresh id per decision, so a retried request is applied once.
export function decisionId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- server-sent events ---------------------------------------------------------------------

// Feed text in, get complete events out: {event, data} per blank-line-terminated block;
// comments (": keep-alive") are dropped. Follows the SSE format: data lines are joined with
// "\n", CR/LF/CRLF all end a line, one leading space after the colon is removed.
export class SseParser {
  constructor() { this.buffer = ""; }
  push(text) {
    this.buffer += text;
    const events = [];
    let match;
    while ((match = /\r\n\r\n|\n\n|\r\r/.exec(this.buffer))) {
      const block = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      let event = "message";
      const data = [];
      for (const line of block.split(/\r\n|\r|\n/)) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) events.push({ event, data: data.join("\n") });
    }
    return events;
  }
}

// Follow a stream until stop() is called: onEvent(name, json) for each event, onStatus(state,
// detail) as the connection comes and goes ("live", "reconnecting", "unauthorized",
// "gone"). Reconnects with back-off; a 401/403/404 ends it (reconnecting would not help).
export function follow(path, { onEvent, onStatus = () => {} }) {
  const controller = new AbortController();
  let stopped = false;
  let delay = 1000;

  async function once() {
    const response = await fetch(path, { headers: { Accept: "text/event-stream", ...authHeaders() }, signal: controller.signal, cache: "no-store" });
    if (!response.ok) {
      const text = await response.text();
      let body = null;
      try { body = JSON.parse(text); } catch { body = null; }
      throw new ApiError(response.status, detailOf(response.status, body, text));
    }
    onStatus("live");
    delay = 1000;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const { event, data } of parser.push(value)) {
        let payload = data;
        try { payload = JSON.parse(data); } catch { /* not JSON: hand over the text */ }
        onEvent(event, payload);
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
        if (!stopped) onStatus("reconnecting", "the live stream ended; reconnecting");
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        if (error instanceof ApiError && [401, 403].includes(error.status)) { onStatus("unauthorized", error.detail); return; }
        if (error instanceof ApiError && error.status === 404) { onStatus("gone", error.detail); return; }
        onStatus("reconnecting", error instanceof ApiError ? error.detail : `cannot reach the Stanch API: ${error.message}`);
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  })();

  return { stop() { stopped = true; controller.abort(); } };
}

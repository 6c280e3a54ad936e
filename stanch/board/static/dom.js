// Small DOM helpers. Everything the API returns is data from alerts and people: it goes into
// the page as text nodes and attribute values, never as HTML.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// --- time -----------------------------------------------------------------------------------

const formatter = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, formatter.format(date));
}

export function relative(iso, now = Date.now()) {
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const [unit, size] = units.find(([, size]) => Math.abs(seconds) >= size) || units[3];
  return new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }).format(Math.round(seconds / size), unit);
}

// --- words ----------------------------------------------------------------------------------

export const words = (value) => String(value ?? "").replaceAll("_", " ");

// Status words with a mark, so no state is told by colour alone.
const MARKS = {
  done: "✔", running: "…", awaiting_approval: "‖", failed: "✘", rejected: "✘", skipped: "–", pending: "○",
};

export function stageBadge(status) {
  return h("span", { class: `badge badge--${status}` }, h("span", { "aria-hidden": "true" }, `${MARKS[status] || "•"} `), words(status));
}

export function severityBadge(severity) {
  return severity ? h("span", { class: `badge badge--sev-${severity}` }, words(severity)) : "—";
}

export function statusBadge(status) {
  return status ? h("span", { class: `badge badge--status badge--st-${status}` }, words(status)) : "—";
}

// A description list from [term, value] pairs; empty values are left out.
export function facts(pairs, className = "facts") {
  return h("dl", { class: className }, pairs
    .filter(([, value]) => value !== undefined && value !== null && value !== "")
    .map(([term, value]) => h("div", { class: "facts__row" }, h("dt", {}, term), h("dd", {}, value))));
}

export function section(id, title, ...children) {
  return h("section", { class: "panel", id, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title`, class: "panel__title" }, title), ...children);
}

// Announce a short message to screen readers (the page's aria-live region).
export function announce(message) {
  const region = $("#announcer");
  if (!region || !message) return;
  region.append(h("p", {}, message));
  while (region.childElementCount > 5) region.firstElementChild.remove();
}

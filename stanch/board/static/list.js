// The incident list: the same filters as `GET /v1/incidents` (read from the API's own
// OpenAPI description, so a filter the API gains shows up here), live from `/v1/events`.

import { api, follow } from "./api.js";
import { $, announce, h, replace, severityBadge, statusBadge, when, words } from "./dom.js";

const LABELS = { status: "Status", severity: "Severity", runbook: "Runbook", target: "Target" };
const HINTS = { runbook: "e.g. harmful-output", target: "e.g. gateway:support-bot" };
// Used when the API does not describe itself.
const FALLBACK = [
  { name: "status", kind: "enum", options: ["open", "triage", "confirmed", "containing", "rolling_back", "hotfixing", "verifying", "restoring", "reviewing", "awaiting_decision", "awaiting_report", "closed", "false_positive", "aborted"] },
  { name: "severity", kind: "enum", options: ["low", "medium", "high", "critical"] },
  { name: "runbook", kind: "text" },
  { name: "target", kind: "text" },
];
const SINCE = /since|after/i;

function schemaOf(schema, components) {
  if (!schema) return {};
  if (schema.$ref) return schemaOf(components[schema.$ref.split("/").pop()], components);
  const variants = schema.anyOf || schema.oneOf;
  if (variants) return schemaOf(variants.find((s) => s.type !== "null") || {}, components);
  return schema;
}

async function filterSpec() {
  let filters;
  try {
    const doc = await api("/openapi.json");
    const components = doc.components?.schemas || {};
    filters = (doc.paths["/v1/incidents"].get.parameters || [])
      .filter((p) => p.in === "query" && p.name !== "limit")
      .map((p) => {
        const schema = schemaOf(p.schema, components);
        if (schema.enum) return { name: p.name, kind: "enum", options: schema.enum };
        if (schema.format === "date-time" || SINCE.test(p.name)) return { name: p.name, kind: "datetime" };
        return { name: p.name, kind: "text" };
      });
  } catch {
    filters = FALLBACK;
  }
  // Opened-since: by the API when it takes such a filter, else on the list it sent.
  if (!filters.some((f) => f.kind === "datetime")) filters.push({ name: "opened_since", kind: "datetime", local: true });
  return filters;
}

function control(filter, value) {
  const id = `filter-${filter.name}`;
  const label = h("label", { for: id }, filter.kind === "datetime" ? "Opened since" : LABELS[filter.name] || words(filter.name));
  let input;
  if (filter.kind === "enum") {
    input = h("select", { id, name: filter.name },
      h("option", { value: "" }, "any"),
      filter.options.map((option) => h("option", { value: option, selected: option === value }, words(option))));
  } else if (filter.kind === "datetime") {
    input = h("input", { id, name: filter.name, type: "datetime-local", step: "1", value: value ? toLocalInput(value) : "" });
  } else {
    input = h("input", { id, name: filter.name, type: "text", value: value || "", placeholder: HINTS[filter.name] || "", spellcheck: "false", autocapitalize: "off" });
  }
  return h("div", { class: "field field--filter" }, label, input);
}

// <input type="datetime-local"> speaks local wall time without a zone; the API speaks ISO.
function toLocalInput(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}

function fromLocalInput(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

function row(incident, fresh) {
  const link = h("a", { href: `/board/incidents/${encodeURIComponent(incident.id)}`, class: "incident-link" }, incident.id);
  return h("tr", { class: fresh ? "row--new" : "", "data-incident": incident.id },
    h("th", { scope: "row", "data-label": "Incident" }, link, fresh ? h("span", { class: "tag tag--new" }, "new") : "",
      incident.drill ? h("span", { class: "tag tag--drill", title: "a drill: a rehearsal on a drill route, not an incident" }, "drill") : ""),
    h("td", { "data-label": "Status" }, statusBadge(incident.status)),
    h("td", { "data-label": "Severity" }, severityBadge(incident.severity)),
    h("td", { "data-label": "Runbook" }, incident.runbook || "—"),
    h("td", { "data-label": "Target" }, incident.target || "—"),
    h("td", { "data-label": "Opened" }, when(incident.opened_at)));
}

export async function showList(main, ctx) {
  document.title = "Incidents · Stanch";
  const filters = await filterSpec();
  const params = new URLSearchParams(location.search);
  const form = h("form", { class: "filters__form", "aria-label": "Filter incidents", role: "search" },
    filters.map((filter) => control(filter, params.get(filter.name))),
    h("div", { class: "filters__buttons" },
      h("button", { type: "submit", class: "button button--primary" }, "Apply filters"),
      h("button", { type: "button", class: "button", id: "clear-filters" }, "Clear")));
  // Folded on a phone unless a filter is on, so the incidents come first.
  const active = filters.filter((f) => params.get(f.name)).length;
  const summary = h("summary", {}, "Filters", active ? ` (${active} on)` : "");
  const folder = h("details", { class: "filters", open: active > 0 || matchMedia("(min-width: 48rem)").matches }, summary, form);
  const status = h("p", { class: "live", id: "list-live" }, "Connecting…");
  const caption = h("caption", {}, "Incidents");
  const body = h("tbody", {});
  const table = h("table", { class: "incidents", "aria-describedby": "list-live" }, caption,
    h("thead", {}, h("tr", {}, ["Incident", "Status", "Severity", "Runbook", "Target", "Opened"].map((c) => h("th", { scope: "col" }, c)))),
    body);
  const empty = h("p", { class: "empty", hidden: true }, "No incidents match these filters.");
  replace(main, h("h1", {}, "Incidents"), folder, status, h("div", { class: "table-wrap" }, table), empty);

  let stream = null;
  let seen = null;
  const arrived = new Map(); // id -> when this page first saw it; "new" for two minutes
  ctx.onLeave(() => stream?.stop());

  function chosen() {
    const data = new FormData(form);
    const chosenFilters = {};
    for (const filter of filters) {
      const value = String(data.get(filter.name) || "").trim();
      if (value) chosenFilters[filter.name] = filter.kind === "datetime" ? fromLocalInput(value) : value;
    }
    return chosenFilters;
  }

  function render(incidents) {
    const local = filters.find((f) => f.local);
    const since = local && chosen()[local.name];
    const shown = since ? incidents.filter((i) => i.opened_at && new Date(i.opened_at) >= new Date(since)) : incidents;
    const fresh = seen ? shown.filter((i) => !seen.has(i.id)) : [];
    fresh.forEach((incident) => arrived.set(incident.id, Date.now()));
    replace(body, shown.map((incident) => row(incident, Date.now() - (arrived.get(incident.id) ?? -Infinity) < 120000)));
    replace(caption, `Incidents (${shown.length})`);
    empty.hidden = shown.length > 0;
    table.hidden = shown.length === 0;
    for (const incident of fresh) announce(`New incident ${incident.id}, severity ${incident.severity || "not graded yet"}.`);
    seen = new Set([...(seen || []), ...shown.map((i) => i.id)]);
  }

  function start() {
    stream?.stop();
    seen = null;
    const query = new URLSearchParams(Object.entries(chosen()).filter(([name]) => !filters.find((f) => f.name === name)?.local));
    stream = follow(`/v1/events${query.size ? `?${query}` : ""}`, {
      onEvent(event, data) {
        if (event === "incidents") {
          ctx.clearError();
          render(data);
          replace(status, h("span", { class: "dot dot--live", "aria-hidden": "true" }), `Live · updated ${new Date().toLocaleTimeString()}`);
        } else if (event === "error") {
          replace(status, h("span", { class: "dot dot--down", "aria-hidden": "true" }), "Not live: ", data.detail);
        }
      },
      onStatus(state, detail) {
        if (state === "unauthorized") ctx.unauthorized(detail);
        else if (state === "gone") ctx.error(404, detail);
        else if (state === "reconnecting") replace(status, h("span", { class: "dot dot--down", "aria-hidden": "true" }), `Reconnecting: ${detail}`);
      },
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams(chosen());
    history.replaceState(null, "", `/board${query.size ? `?${query}` : ""}`);
    replace(summary, "Filters", query.size ? ` (${query.size} on)` : "");
    start();
  });
  $("#clear-filters", form).addEventListener("click", () => {
    form.reset();
    for (const input of form.querySelectorAll("input, select")) input.value = "";
    history.replaceState(null, "", "/board");
    replace(summary, "Filters");
    start();
  });
  start();
}

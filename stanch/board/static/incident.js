// One incident, live from `/v1/incidents/{id}/events`: what it needs from you (approval,
// acknowledgement), the nine stages, the regulatory clock, actions, evidence, the timeline.

import { api, ApiError, decisionId, follow } from "./api.js";
import {
  announce, facts, h, relative, replace, section, severityBadge, stageBadge, statusBadge, when, words,
} from "./dom.js";

const TERMINAL = new Set(["closed", "false_positive", "aborted"]);

// --- the decision panel: approve / reject / acknowledge --------------------------------------

function decisionsFor(state, pending) {
  const since = new Date(pending.requested_at);
  return (state.approvals || []).filter((a) => a.stage === pending.stage && new Date(a.at) >= since);
}

function pendingBlock(state, pending, ctx, send) {
  const who = ctx.who;
  const decided = decisionsFor(state, pending);
  const approvedBy = pending.approvers?.length ? pending.approvers : decided.filter((a) => a.approve && a.verified !== false).map((a) => a.approver);
  const notes = [];
  if (approvedBy.includes(who.user)) notes.push("You have approved this step; someone else must give the next approval.");
  if (pending.requested_by === who.user) notes.push("You requested this step: four eyes means someone else approves it.");
  if (pending.roles?.length && !pending.roles.some((r) => who.roles?.includes(r))) {
    notes.push(`Approving needs one of the roles ${pending.roles.join(", ")}; you hold ${who.roles?.length ? who.roles.join(", ") : "none"}.`);
  }
  const comment = h("textarea", { id: "decision-comment", name: "comment", rows: 2, "aria-describedby": "decision-comment-hint decision-error" });
  const error = h("p", { class: "field-error", id: "decision-error", role: "alert", hidden: true });
  const approve = h("button", { type: "button", class: "button button--primary", id: "approve" }, `Approve ${pending.stage}`);
  const reject = h("button", { type: "button", class: "button button--danger", id: "reject" }, `Reject ${pending.stage}`);

  async function decide(yes) {
    const text = comment.value.trim();
    if (!yes && !text) {
      replace(error, "A rejection needs a comment: say why, it goes into the incident's record.");
      error.hidden = false;
      comment.focus();
      return;
    }
    error.hidden = true;
    // Who decides is the signed-in identity (headers); the body repeats it for APIs that
    // still read it from there.
    const body = { stage: pending.stage, approve: yes, comment: text, decision_id: decisionId(), approver: who.user, roles: who.roles || [] };
    await send(`/v1/incidents/${encodeURIComponent(state.id)}/approvals`, body, [approve, reject], error,
      (receipt) => `You ${yes ? "approved" : "rejected"} ${pending.stage} at ${new Date().toLocaleTimeString()}: ${receipt?.message || "accepted"}`);
  }
  approve.addEventListener("click", () => decide(true));
  reject.addEventListener("click", () => decide(false));

  const needed = pending.count > 1 ? `${pending.count} approvals` : "1 approval";
  return h("div", { class: "decision" },
    h("h3", {}, `${words(pending.stage)} awaits approval`),
    facts([
      ["Needs", needed + (pending.required_roles?.length ? `, including ${pending.required_roles.join(", ")}` : "")],
      ["Who may approve", pending.roles?.length ? pending.roles.join(", ") : "anyone"],
      ["Approved so far", approvedBy.length ? `${approvedBy.length} of ${pending.count}: ${approvedBy.join(", ")}` : `0 of ${pending.count}`],
      ["Requested", h("span", {}, `by ${pending.requested_by} `, when(pending.requested_at))],
      ["Severity", severityBadge(pending.severity)],
    ]),
    notes.map((note) => h("p", { class: "hint hint--note" }, note)),
    h("div", { class: "field" },
      h("label", { for: "decision-comment" }, "Comment"),
      comment,
      h("p", { class: "hint", id: "decision-comment-hint" }, "Optional when approving, required when rejecting.")),
    error,
    h("div", { class: "buttons" }, approve, reject));
}

function ackBlock(state, ctx, send) {
  const button = h("button", { type: "button", class: "button button--primary", id: "acknowledge" }, "Acknowledge");
  const error = h("p", { class: "field-error", role: "alert", hidden: true });
  button.addEventListener("click", () => send(`/v1/incidents/${encodeURIComponent(state.id)}/ack`,
    { note: "", responder: ctx.who.user }, [button], error,
    (receipt) => `You acknowledged the incident at ${new Date().toLocaleTimeString()}: ${receipt?.message || "accepted"}`));
  return h("div", { class: "decision" },
    h("h3", {}, "Nobody has acknowledged this incident"),
    h("p", {}, `Escalation continues tier by tier until someone takes it (tier ${state.escalation_tier} so far).`),
    error, h("div", { class: "buttons" }, button));
}

function decisionPanel(state, ctx, send) {
  const blocks = [];
  if (!TERMINAL.has(state.status) && !state.acknowledged_by) blocks.push(ackBlock(state, ctx, send));
  if (state.pending_approval) blocks.push(pendingBlock(state, state.pending_approval, ctx, send));
  if (state.status === "triage") blocks.push(h("p", {}, "Confirmation was inconclusive: a responder settles it with ", h("code", {}, "POST /v1/incidents/{id}/triage"), "."));
  if (state.status === "awaiting_decision") blocks.push(h("p", {}, "An action failed after its retries; protections stay in place. Decide with ", h("code", {}, "POST /v1/incidents/{id}/decisions"), " (retry, skip or abort)."));
  if (!blocks.length) {
    blocks.push(h("p", { class: "quiet" }, TERMINAL.has(state.status) ? `This incident is ${words(state.status)}; it takes no more decisions.` : "Nothing waits for you right now."));
  }
  return blocks;
}

// --- read-only sections ------------------------------------------------------------------------

function stagesList(state) {
  const done = state.stages.filter((s) => s.status === "done" || s.status === "skipped").length;
  return [
    h("p", { class: "progress-text", id: "stage-progress" }, `${done} of ${state.stages.length} stages finished`),
    h("progress", { class: "progress", max: state.stages.length, value: done, "aria-labelledby": "stage-progress" }, `${done} of ${state.stages.length}`),
    h("ol", { class: "stages", "aria-describedby": "stage-progress" }, state.stages.map((stage) =>
      h("li", { class: `stage stage--${stage.status}`, "data-stage": stage.name, "data-status": stage.status },
        h("div", { class: "stage__head" }, h("span", { class: "stage__name" }, words(stage.name)), stageBadge(stage.status)),
        stage.detail ? h("p", { class: "stage__detail" }, stage.detail) : "",
        stage.started_at ? h("p", { class: "stage__time" }, "started ", when(stage.started_at),
          stage.finished_at ? [" · finished ", when(stage.finished_at)] : "") : ""))),
  ];
}

function regulatory(clock) {
  if (!clock?.serious) return [h("p", {}, "Not a serious incident: no report to a market surveillance authority is due.")];
  const filed = clock.filed;
  return [facts([
    ["Serious incident", "yes"],
    ["Why", clock.reason],
    ["Aware since", when(clock.aware_at)],
    ["Report deadline", clock.deadline ? h("span", {}, when(clock.deadline), ` (${relative(clock.deadline)})`) : "—"],
    ["Reminders sent", String(clock.reminders_sent ?? 0)],
    ["Report filed", filed ? h("span", {}, `by ${filed.by}, reference ${filed.reference}`, filed.filed_at ? [" on ", when(filed.filed_at)] : "") : h("strong", {}, "not yet")],
  ])];
}

function undoState(action) {
  if (action.undone_at) return h("span", {}, "undone ", when(action.undone_at), action.undo_key ? [" · key ", h("code", {}, action.undo_key)] : "");
  if (!action.applied_at) return "not applied";
  if (!action.reversible) return "in place · cannot be undone";
  return "in place · lifted on restore";
}

function actionsTable(actions) {
  if (!actions?.length) return [h("p", { class: "quiet" }, "No action has been applied to the target yet.")];
  return [h("div", { class: "table-wrap" }, h("table", { class: "actions" },
    h("thead", {}, h("tr", {}, ["Stage", "Action", "Idempotency key", "Applied", "Undo"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, actions.map((a) => h("tr", {},
      h("td", { "data-label": "Stage" }, words(a.stage)),
      h("th", { scope: "row", "data-label": "Action" }, words(a.kind)),
      h("td", { "data-label": "Idempotency key" }, h("code", {}, a.idempotency_key)),
      h("td", { "data-label": "Applied" }, when(a.applied_at)),
      h("td", { "data-label": "Undo" }, undoState(a)))))))];
}

function evidence(record) {
  if (!record) return [h("p", { class: "quiet" }, "No evidence snapshot yet: it is taken before the first change to the target.")];
  const summary = Object.keys(record.summary || {}).length
    ? h("details", {}, h("summary", {}, "What the snapshot holds"), h("pre", {}, JSON.stringify(record.summary, null, 2)))
    : "";
  return [facts([["SHA-256", h("code", {}, record.sha256)], ["Location", h("code", {}, record.location)], ["Taken", when(record.taken_at)]]), summary];
}

function approvalsList(approvals) {
  if (!approvals?.length) return [h("p", { class: "quiet" }, "No decisions yet.")];
  return [h("ul", { class: "records" }, approvals.map((a) => h("li", {},
    h("strong", {}, a.approver), a.approve ? " approved " : " rejected ", h("strong", {}, words(a.stage)),
    a.roles?.length ? ` as ${a.roles.join(", ")}` : "", a.via === "signal" ? " (by signal)" : "", " · ", when(a.at),
    a.verified === false ? h("p", { class: "records__unverified" }, "Not vouched for by the API: recorded, never counted.") : "",
    a.comment ? h("p", { class: "records__comment" }, a.comment) : "")))];
}

const TIMELINE_SHOWN = 12;

function timeline(entries, showAll, toggle) {
  const newest = [...(entries || [])].reverse();
  const shown = showAll ? newest : newest.slice(0, TIMELINE_SHOWN);
  const more = newest.length > TIMELINE_SHOWN
    ? h("button", { type: "button", id: "timeline-toggle", class: "button button--quiet more", "aria-expanded": String(showAll), "aria-controls": "timeline-entries", onclick: toggle },
      showAll ? `Show the latest ${TIMELINE_SHOWN} only` : `Show all ${newest.length} entries`)
    : "";
  return [h("ol", { class: "timeline", id: "timeline-entries" }, shown.map((e) => h("li", {},
    h("p", { class: "timeline__meta" }, when(e.at), " ", h("span", { class: `tag tag--${e.kind}` }, e.kind), " ", e.actor),
    h("p", { class: "timeline__message" }, e.message)))), more];
}

// In a storm the incident keeps only the signals that bring something new; every one is counted.
function signalCount(state) {
  const kept = state.signals?.length ?? 0;
  const counted = Math.max(state.signal_count ?? 0, kept);
  return counted > kept ? `${counted.toLocaleString("en")} (${kept} kept in full)` : String(counted);
}

function header(state, ctx) {
  const ui = ctx.health?.ui_url && ctx.health?.namespace
    ? `${ctx.health.ui_url.replace(/\/$/, "")}/namespaces/${encodeURIComponent(ctx.health.namespace)}/workflows/${encodeURIComponent(state.id)}`
    : null;
  return [
    h("p", { class: "badges" }, statusBadge(state.status), " ", severityBadge(state.severity),
      state.drill ? h("span", { class: "tag tag--drill", title: "a rehearsal on a drill route: real pages and approvals, no user harmed" }, "DRILL") : ""),
    facts([
      ["Runbook", h("span", {}, state.runbook, " ", h("code", { class: "sha", title: state.runbook_sha256 }, state.runbook_sha256?.slice(0, 12)))],
      ["Target", `${state.target.adapter}:${state.target.model}${state.target.version ? `@${state.target.version}` : ""}`],
      ["Opened", when(state.opened_at)],
      ["Acknowledged", state.acknowledged_by ? h("span", {}, `by ${state.acknowledged_by} `, when(state.acknowledged_at)) : "not yet"],
      ["Signals", signalCount(state)],
      ["Why this severity", state.severity_reasons?.length ? state.severity_reasons.join("; ") : ""],
      ["Closed", state.closed_at ? h("span", {}, when(state.closed_at), state.close_reason ? ` — ${state.close_reason}` : "") : ""],
    ]),
    ui ? h("p", {}, h("a", { href: ui, target: "_blank", rel: "noopener noreferrer", id: "temporal-link" }, "Open the workflow in the Temporal UI"),
      h("span", { class: "visually-hidden" }, " (opens in a new tab)")) : "",
  ];
}

// --- what changed, in words, for the aria-live region -----------------------------------------

function changes(before, after) {
  if (!before) return [];
  const said = [];
  if (before.status !== after.status) said.push(`Status: ${words(after.status)}.`);
  const old = Object.fromEntries(before.stages.map((s) => [s.name, s.status]));
  for (const stage of after.stages) if (old[stage.name] !== stage.status) said.push(`Stage ${words(stage.name)}: ${words(stage.status)}.`);
  const key = (p) => (p ? `${p.stage}@${p.requested_at}` : "");
  if (key(before.pending_approval) !== key(after.pending_approval) && after.pending_approval) said.push(`${words(after.pending_approval.stage)} awaits approval.`);
  return said;
}

// --- the page ---------------------------------------------------------------------------------

export function showIncident(main, ctx, incidentId) {
  document.title = `${incidentId} · Stanch`;
  const live = h("p", { class: "live", id: "incident-live" }, "Connecting…");
  const outcome = h("p", { class: "outcome", role: "status", hidden: true });
  const slots = Object.fromEntries(["head", "decide", "stages", "regulatory", "actions", "evidence", "approvals", "timeline"].map((k) => [k, h("div", {})]));
  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: "/board" }, "← All incidents")),
    h("h1", { class: "incident-id" }, incidentId), live, slots.head,
    h("div", { class: "columns" },
      h("div", { class: "columns__main" },
        section("needs-you", "Needs you", outcome, slots.decide),
        section("stages", "Stages", slots.stages),
        section("actions", "Actions on the target", slots.actions)),
      h("div", { class: "columns__side" },
        section("regulatory", "Regulatory clock", slots.regulatory),
        section("approvals", "Decisions", slots.approvals),
        section("evidence", "Evidence", slots.evidence))),
    section("timeline", "Timeline (newest first)", slots.timeline));

  let current = null;
  let fullTimeline = false;
  const drawn = {}; // slot -> the data it was last drawn from

  // Redraw a slot only when its data changed: focus, an open <details>, a comment being
  // typed and the reading position all survive the updates that stream in meanwhile.
  function update(name, data, build) {
    const key = JSON.stringify(data);
    if (drawn[name] === key) return;
    drawn[name] = key;
    const slot = slots[name];
    const focused = slot.contains(document.activeElement) ? document.activeElement.id : "";
    replace(slot, build());
    if (focused) document.getElementById(focused)?.focus();
  }

  const drawTimeline = (state) => update("timeline", [state.timeline, fullTimeline], () => timeline(state.timeline, fullTimeline, () => {
    fullTimeline = !fullTimeline;
    drawTimeline(current);
  }));

  async function send(path, body, buttons, error, success) {
    buttons.forEach((b) => { b.disabled = true; });
    error.hidden = true;
    try {
      const receipt = await api(path, { method: "POST", body });
      replace(outcome, success(receipt));
      outcome.hidden = false;
      delete drawn.decide; // redraw the panel with the next state
    } catch (failure) {
      const status = failure instanceof ApiError && failure.status ? `The API refused (${failure.status}): ` : "";
      replace(error, status, failure.detail || failure.message);
      error.hidden = false;
      if (failure instanceof ApiError && failure.status === 401) ctx.unauthorized(failure.detail);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  function render(state) {
    const said = changes(current, state);
    current = state;
    const { timeline: _t, stages: _s, actions: _a, approvals: _d, evidence: _e, regulatory: _r, review: _v, ...head } = state;
    update("head", head, () => header(state, ctx));
    update("decide", [state.status, state.acknowledged_by, state.escalation_tier, state.pending_approval, ctx.who.user],
      () => decisionPanel(state, ctx, send));
    update("stages", state.stages, () => stagesList(state));
    update("regulatory", state.regulatory, () => regulatory(state.regulatory));
    update("actions", state.actions, () => actionsTable(state.actions));
    update("evidence", state.evidence, () => evidence(state.evidence));
    update("approvals", state.approvals, () => approvalsList(state.approvals));
    drawTimeline(state);
    said.forEach(announce);
  }

  const stream = follow(`/v1/incidents/${encodeURIComponent(incidentId)}/events`, {
    onEvent(event, data) {
      if (event === "state") {
        ctx.clearError();
        render(data);
        replace(live, h("span", { class: "dot dot--live", "aria-hidden": "true" }), `Live · updated ${new Date().toLocaleTimeString()}`);
      } else if (event === "error") {
        replace(live, h("span", { class: "dot dot--down", "aria-hidden": "true" }), "Not live: ", data.detail);
      }
    },
    onStatus(state, detail) {
      if (state === "unauthorized") ctx.unauthorized(detail);
      else if (state === "gone") ctx.error(404, detail);
      else if (state === "reconnecting") replace(live, h("span", { class: "dot dot--down", "aria-hidden": "true" }), `Reconnecting: ${detail}`);
    },
  });
  ctx.onLeave(() => stream.stop());
}

// The board's entry point: sign in as the API asks, then show the list or one incident
// according to the location (/board, /board/incidents/{id}).

import { identity } from "./api.js";
import { $, h, replace } from "./dom.js";
import { showIncident } from "./incident.js";
import { showList } from "./list.js";
import { authMode, showSignedIn, signInForm, whoAmI } from "./signin.js";

const main = $("#main");
const alertBox = $("#alert");
let leaving = [];

function leave() {
  leaving.forEach((stop) => stop());
  leaving = [];
}

function showError(status, detail) {
  replace(alertBox, status ? `The API answered ${status}: ` : "", detail);
  alertBox.hidden = false;
}

// /healthz says where the Temporal UI is; it answers 503 (with the same body) when degraded.
async function health() {
  try {
    const response = await fetch("/healthz", { headers: { Accept: "application/json" } });
    return await response.json();
  } catch {
    return null;
  }
}

async function signIn(mode, problem = "") {
  leave();
  identity.clear();
  showSignedIn(null);
  $("#dev-banner").hidden = true; // the form itself says so, in place
  const who = await signInForm(main, mode, problem);
  showSignedIn(who);
  return who;
}

async function boot() {
  let mode;
  try {
    mode = await authMode();
  } catch (failure) {
    showError(failure.status, failure.detail || failure.message);
    replace(main, h("h1", {}, "The board cannot reach the Stanch API"), h("p", {}, "Reload the page to try again."));
    return;
  }
  let who = identity.load();
  let problem = "";
  if (who && who.mode === mode) {
    try {
      who = await whoAmI(who);
      identity.save(who);
    } catch (failure) {
      problem = `Signed out (${failure.status || "no answer"}): ${failure.detail || failure.message}`;
      who = null;
    }
  } else {
    who = null;
  }
  const signedInNow = !who;
  if (!who) who = await signIn(mode, problem);
  showSignedIn(who);

  const ctx = {
    who,
    mode,
    health: await health(),
    error: showError,
    clearError() { alertBox.hidden = true; },
    onLeave(stop) { leaving.push(stop); },
    async unauthorized(detail) {
      ctx.who = await signIn(mode, `Signed out: ${detail}`);
      route(ctx, true);
    },
  };
  $("#sign-out").addEventListener("click", async () => {
    ctx.who = await signIn(mode);
    route(ctx, true);
  });
  route(ctx, signedInNow);
}

// `focus`: after signing in, the form that had focus is gone; the page content takes it.
function route(ctx, focus = false) {
  leave();
  const match = location.pathname.match(/^\/board\/incidents\/([^/]+)\/?$/);
  if (match) showIncident(main, ctx, decodeURIComponent(match[1]));
  else showList(main, ctx);
  if (focus) main.focus({ preventScroll: true });
}

window.addEventListener("pagehide", leave);
boot();

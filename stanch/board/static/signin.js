// Sign-in: the API says how (`GET /v1/auth`): a token, or — in insecure-dev mode only — a
// name and roles that the API takes on trust. `GET /v1/me` says who the API thinks we are.

import { api, ApiError, identity, parseRoles } from "./api.js";
import { $, h, replace } from "./dom.js";

// "token" or "insecure-dev". An API from before sign-in existed has no /v1/auth: it takes
// names from request bodies, which is development mode in all but name.
export async function authMode() {
  try {
    const answer = await api("/v1/auth", { who: null });
    return answer?.mode === "token" ? "token" : "insecure-dev";
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return "insecure-dev";
    throw error;
  }
}

// Ask the API who `who` is. Resolves to the identity to keep; rejects with the API's words.
export async function whoAmI(who) {
  try {
    const me = await api("/v1/me", { who });
    return { ...who, user: me?.user || who.user, roles: Array.isArray(me?.roles) ? me.roles : who.roles || [] };
  } catch (error) {
    // No /v1/me yet: in development mode the name typed is the name used.
    if (error instanceof ApiError && error.status === 404 && who.mode === "insecure-dev") return who;
    throw error;
  }
}

export function showSignedIn(who) {
  const box = $("#who");
  if (!who) { box.hidden = true; return; }
  const roles = who.roles?.length ? who.roles.join(", ") : "no roles";
  replace($("#who-name"), "Signed in as ", h("strong", {}, who.user || "(unknown)"), ` · ${roles}`);
  box.hidden = false;
  $("#dev-banner").hidden = who.mode !== "insecure-dev";
}

// Render the sign-in form into `main`; resolves with the verified identity.
export function signInForm(main, mode, problem = "") {
  return new Promise((resolve) => {
    const error = h("p", { class: "field-error", id: "signin-error", role: "alert" }, problem);
    error.hidden = !problem;
    const dev = mode === "insecure-dev";
    const fields = dev
      ? [
        h("div", { class: "field" },
          h("label", { for: "signin-user" }, "Your name"),
          h("input", { id: "signin-user", name: "user", autocomplete: "username", required: true, spellcheck: "false", "aria-describedby": "signin-error" })),
        h("div", { class: "field" },
          h("label", { for: "signin-roles" }, "Your roles"),
          h("input", { id: "signin-roles", name: "roles", spellcheck: "false", "aria-describedby": "signin-roles-hint signin-error" }),
          h("p", { class: "hint", id: "signin-roles-hint" }, "Comma-separated, e.g. oncall, safety, incident-commander.")),
      ]
      : [
        h("div", { class: "field" },
          h("label", { for: "signin-token" }, "API token"),
          h("input", { id: "signin-token", name: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false", "aria-describedby": "signin-token-hint signin-error" }),
          h("p", { class: "hint", id: "signin-token-hint" }, "Kept in this browser tab only, until you sign out or close it.")),
      ];
    const submit = h("button", { type: "submit", class: "button button--primary" }, "Sign in");
    const form = h("form", { class: "signin", "aria-labelledby": "signin-title", novalidate: true },
      h("h1", { id: "signin-title" }, "Sign in"),
      dev
        ? h("p", { class: "banner banner--warn" }, h("strong", {}, "Development mode (insecure-dev): "),
          "there is no password. The API believes the name and roles you type here. Never run it like this where others can reach it.")
        : h("p", {}, "Sign in with the API token your Stanch administrator issued you."),
      ...fields, error, submit);

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const who = dev
        ? { mode, user: String(data.get("user") || "").trim(), roles: parseRoles(data.get("roles")) }
        : { mode, token: String(data.get("token") || "").trim() };
      if (dev ? !who.user : !who.token) {
        replace(error, dev ? "Enter your name." : "Enter your API token.");
        error.hidden = false;
        form.querySelector("input").focus();
        return;
      }
      submit.disabled = true;
      try {
        const verified = await whoAmI(who);
        identity.save(verified);
        resolve(verified);
      } catch (failure) {
        replace(error, failure instanceof ApiError && failure.status ? `Sign-in refused (${failure.status}): ` : "", failure.detail || failure.message);
        error.hidden = false;
        submit.disabled = false;
      }
    });
    replace(main, form);
    form.querySelector("input").focus();
  });
}

// The console's shell: sign-in and sign-out, the project switch, and the hash router that
// draws one page at a time into <main>. Pages live in their own modules.

import { ApiError, call, get, setCsrfToken } from "./api.js";
import { announce, errorBox, field, formError, h, replace, showErrors } from "./ui.js";
import { renderServices } from "./services.js";
import { renderService } from "./service.js";
import { renderJob, renderJobs } from "./jobs.js";
import { renderImages, renderSecrets } from "./resources.js";

const main = document.getElementById("main");

/** What every page gets: the project, and a place to register cleanups (timers). */
const ctx = {
  project: localStorage.getItem("wharf.project") || "default",
  cleanups: [],
  onCleanup(fn) {
    this.cleanups.push(fn);
  },
};

const routes = [
  [/^#\/services$/, () => renderServices(main, ctx)],
  [/^#\/services\/([^/]+)\/([^/]+)$/, (m) => renderService(main, ctx, decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^#\/jobs$/, () => renderJobs(main, ctx)],
  [/^#\/jobs\/([^/]+)\/([^/]+)$/, (m) => renderJob(main, ctx, decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^#\/images$/, () => renderImages(main, ctx)],
  [/^#\/secrets$/, () => renderSecrets(main, ctx)],
];

let signedIn = false;

async function route() {
  const hash = location.hash;
  if (!hash.startsWith("#/")) {
    if (!hash) location.replace("#/services");
    return; // "#main" (skip link) and other in-page anchors are not pages
  }
  for (const cleanup of ctx.cleanups.splice(0)) cleanup();
  if (!signedIn) return;
  for (const link of document.querySelectorAll("#nav a")) {
    const current = hash === link.getAttribute("href") || hash.startsWith(`${link.getAttribute("href")}/`);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const found = routes.find(([pattern]) => pattern.test(hash));
  if (!found) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, `No console page is at ${hash}.`), h("a", { href: "#/services" }, "Services"));
    return;
  }
  try {
    await found[1](hash.match(found[0]));
    const heading = main.querySelector("h1");
    if (heading) {
      document.title = `${heading.textContent} · Wharf console`;
      announce(`${heading.textContent} page loaded`);
    }
  } catch (error) {
    if (error instanceof ApiError && error.httpStatus === 401) return showSignIn(error.message);
    main.append(errorBox(error));
  }
}

function showSignIn(message) {
  signedIn = false;
  document.getElementById("nav").hidden = true;
  document.getElementById("project-form").hidden = true;
  document.getElementById("who").hidden = true;
  const form = h(
    "form",
    { class: "signin", id: "sign-in", novalidate: true },
    formError(),
    field("Wharf credential", {
      name: "credential",
      type: "password",
      autocomplete: "off",
      required: true,
      hint: "The owner token (wharf auth print-access-token) or a user's token from wharf iam users create. It stays on the server; the browser keeps only a session cookie.",
    }),
    h("button", { type: "submit" }, "Sign in")
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const session = await call("POST", "/console/session", { credential: form.credential.value });
      startSession(session);
    } catch (error) {
      // The API's message about the credential goes next to it.
      error.fieldViolations = [{ field: "credential", description: error.message }];
      showErrors(form, error);
    } finally {
      button.disabled = false;
    }
  });
  replace(
    main,
    h("h1", {}, "Sign in to Wharf"),
    message ? h("p", { class: "error", role: "alert" }, message) : null,
    form
  );
  document.title = "Sign in · Wharf console";
  form.credential.focus();
}

function startSession(session) {
  signedIn = true;
  setCsrfToken(session.csrfToken);
  document.getElementById("principal").textContent = session.principal;
  document.getElementById("who").hidden = false;
  document.getElementById("nav").hidden = false;
  const projectForm = document.getElementById("project-form");
  projectForm.hidden = false;
  projectForm.project.value = ctx.project;
  if (!location.hash.startsWith("#/")) location.replace("#/services");
  route();
  main.focus();
}

document.getElementById("project-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = event.target.project.value.trim() || "default";
  ctx.project = value;
  localStorage.setItem("wharf.project", value);
  announce(`Project ${value}`);
  if (location.hash.split("/").length > 2) location.hash = `#/${location.hash.split("/")[1]}`;
  else route();
});

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await call("DELETE", "/console/session");
  } catch (_) {
    // Signed out either way: the session is gone or was already.
  }
  setCsrfToken(null);
  showSignIn("You are signed out.");
});

window.addEventListener("hashchange", route);

(async () => {
  try {
    startSession(await get("/console/session"));
  } catch (error) {
    showSignIn(error instanceof ApiError && error.httpStatus === 401 ? "" : error.message);
  }
})();

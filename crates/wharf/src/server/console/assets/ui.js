// Small DOM helpers. Pages build elements with h(), never from HTML strings, so nothing the
// API returns (names, env values, log lines) can become markup.

/** h("a", {href: "#"}, "text", child, ...): an element with attributes and children. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside el. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A table with a caption, column headers and rows of cells. */
export function table(caption, headers, rows, attrs) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attrs || {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length }, "None.")))
    )
  );
}

/** An API error shown as the API said it, in an alert region. */
export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error.message || String(error));
}

let fieldCounter = 0;

/**
 * A labelled input: {label, name, value, type, hint, ...attrs}. The wrapper has a slot for
 * the API's message about this field (data-field = the API's field path).
 */
export function field(label, attrs) {
  const id = `f${++fieldCounter}`;
  const { hint, field: apiField, ...rest } = attrs || {};
  const control =
    rest.type === "textarea"
      ? h("textarea", { id, ...rest, type: undefined, value: undefined }, rest.value || "")
      : rest.type === "checkbox"
        ? h("input", { id, ...rest })
        : h("input", { id, type: "text", ...rest });
  const hintId = hint ? `${id}-hint` : undefined;
  const errorId = `${id}-error`;
  control.setAttribute("aria-describedby", [hintId, errorId].filter(Boolean).join(" "));
  return h(
    "div",
    { class: rest.type === "checkbox" ? "field checkbox" : "field", "data-field": apiField || rest.name },
    h("label", { for: id }, label),
    control,
    hint ? h("small", { id: hintId, class: "hint" }, hint) : null,
    h("p", { id: errorId, class: "field-error", role: "alert" })
  );
}

/** Clears the API messages shown in a form. */
export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error, .form-error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/**
 * Shows an ApiError in a form: each field violation next to the field whose data-field is
 * the API's path (or its closest prefix), the rest at the form's top.
 */
export function showErrors(form, error) {
  clearErrors(form);
  const general = form.querySelector(".form-error");
  const placed = [];
  const violations = [...(error.fieldViolations || [])];
  if (!violations.some((v) => v.field) && error.message) {
    // Many API messages start with the field path they are about ("template.timeout: ...").
    const named = /^([A-Za-z][\w.[\]]*)[ :]/.exec(error.message);
    if (named && named[1].includes(".")) violations.push({ field: named[1], description: error.message });
  }
  for (const violation of violations) {
    const target = findField(form, violation.field);
    if (target) {
      target.querySelector(".field-error").textContent = violation.description;
      const control = target.querySelector("input, textarea, select");
      if (control) control.setAttribute("aria-invalid", "true");
      placed.push(violation.description);
    }
  }
  if (!placed.length && general) general.textContent = error.message;
  const first = form.querySelector("[aria-invalid]");
  if (first) first.focus();
  else if (general) general.focus();
}

function findField(form, path) {
  let p = path || "";
  while (p) {
    for (const el of form.querySelectorAll("[data-field]")) {
      if (el.dataset.field === p) return el;
    }
    const cut = Math.max(p.lastIndexOf("."), p.lastIndexOf("["));
    if (cut <= 0) break;
    p = p.slice(0, cut);
  }
  return null;
}

/** A form-level message slot (focusable, announced). */
export function formError() {
  return h("p", { class: "form-error", role: "alert", tabindex: "-1" });
}

/** "2026-11-24T04:05:06Z" -> a local date and time; empty stays empty. */
export function when(timestamp) {
  if (!timestamp) return "";
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? timestamp : date.toLocaleString();
}

/** The last segment of a resource name. */
export const shortName = (name) => (name || "").split("/").pop();

/** The segment after `kind` in a resource name (e.g. "locations"). */
export function segment(name, kind) {
  const parts = (name || "").split("/");
  const i = parts.indexOf(kind);
  return i >= 0 ? parts[i + 1] || "" : "";
}

/** Ready / Failed / In progress, from a Cloud Run terminal condition. */
export function readiness(condition) {
  const state = condition ? condition.state : "";
  if (state === "CONDITION_SUCCEEDED") return h("span", { class: "state ok" }, "Ready");
  if (state === "CONDITION_FAILED") return h("span", { class: "state failed", title: condition.message || "" }, "Failed");
  return h("span", { class: "state pending" }, "In progress");
}

/** Parses "KEY=VALUE" lines into Cloud Run env entries; empty lines are skipped. */
export function parseEnv(text) {
  const env = [];
  for (const raw of (text || "").split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`"${line}" is not KEY=VALUE`);
    env.push({ name: line.slice(0, eq), value: line.slice(eq + 1) });
  }
  return env;
}

/** Announces a message to screen readers (and shows it in the status line). */
export function announce(message) {
  const status = document.getElementById("status");
  if (status) status.textContent = message;
}

// A service's page: its URL and state, revisions with their traffic and tags (edit the split,
// roll back in one action), a revision's configuration, the deploy form (also used to create
// a service), logs that follow, who may do what on it, and its metrics charts (charts.js).

import { followOperation, get, logEntries, patch, post } from "./api.js";
import { metricsPanel } from "./charts.js";
import {
  announce,
  clearErrors,
  errorBox,
  field,
  formError,
  h,
  parseEnv,
  readiness,
  replace,
  shortName,
  showErrors,
  table,
  when,
} from "./ui.js";

const REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION";
const LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST";

const servicePath = (ctx, location, name) =>
  `/v2/projects/${encodeURIComponent(ctx.project)}/locations/${encodeURIComponent(location)}/services/${encodeURIComponent(name)}`;

export async function renderService(main, ctx, location, name) {
  const path = servicePath(ctx, location, name);
  const [service, revisionList] = await Promise.all([get(path), get(`${path}/revisions`)]);
  const revisions = (revisionList && revisionList.revisions) || [];
  const rerender = () => {
    for (const cleanup of ctx.cleanups.splice(0)) cleanup();
    return renderService(main, ctx, location, name);
  };

  const details = h("div", { id: "revision-details" });
  const showRevision = (revision) => replace(details, revisionDetails(revision));
  const latest = revisions.find((r) => r.name === service.latestReadyRevision || shortName(r.name) === shortName(service.latestReadyRevision)) || revisions[0];
  if (latest) showRevision(latest);

  replace(
    main,
    h("p", {}, h("a", { href: "#/services" }, "Services"), " / ", name),
    h("h1", {}, name),
    summary(service, location),
    h(
      "section",
      { "aria-labelledby": "traffic-heading" },
      h("h2", { id: "traffic-heading" }, "Revisions and traffic"),
      trafficForm(path, service, revisions, showRevision, rerender)
    ),
    h("section", { "aria-labelledby": "details-heading" }, h("h2", { id: "details-heading" }, "Revision details"), details),
    h(
      "section",
      { "aria-labelledby": "deploy-heading" },
      h("h2", { id: "deploy-heading" }, "Deploy a new revision"),
      deployForm(ctx, { location, service, onDone: rerender })
    ),
    h("section", { "aria-labelledby": "logs-heading" }, h("h2", { id: "logs-heading" }, "Logs"), logsPanel(ctx, location, name)),
    h("section", { "aria-labelledby": "iam-heading" }, h("h2", { id: "iam-heading" }, "Permissions"), await iamPanel(path)),
    h(
      "section",
      { "aria-labelledby": "metrics-heading" },
      h("h2", { id: "metrics-heading" }, "Metrics"),
      metricsPanel(ctx, location, name)
    )
  );
}

function summary(service, location) {
  return h(
    "div",
    { class: "card" },
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "URL"),
      h("dd", {}, service.uri ? h("a", { href: service.uri, rel: "noreferrer", target: "_blank", id: "service-url" }, service.uri) : "none yet"),
      h("dt", {}, "Region"),
      h("dd", {}, location),
      h("dt", {}, "State"),
      h("dd", {}, readiness(service.terminalCondition), service.terminalCondition && service.terminalCondition.message ? ` ${service.terminalCondition.message}` : ""),
      h("dt", {}, "Last deployed"),
      h("dd", {}, `${when(service.updateTime)} by ${service.lastModifier || service.creator || "unknown"}`),
      h("dt", {}, "Latest ready revision"),
      h("dd", {}, shortName(service.latestReadyRevision) || "none")
    )
  );
}

/** Each revision's share of traffic and tag, as the service's status resolves them. */
function currentTraffic(service) {
  const byRevision = new Map();
  for (const t of service.trafficStatuses || service.traffic || []) {
    const revision = shortName(t.revision || (t.type === LATEST ? service.latestReadyRevision : ""));
    if (!revision) continue;
    const entry = byRevision.get(revision) || { percent: 0, tags: [] };
    entry.percent += t.percent || 0;
    if (t.tag) entry.tags.push(t.tag);
    byRevision.set(revision, entry);
  }
  return byRevision;
}

function trafficForm(path, service, revisions, showRevision, rerender) {
  const traffic = currentTraffic(service);
  const form = h("form", { id: "traffic-form", novalidate: true });
  const progress = h("p", { class: "progress", role: "status" });
  const apply = async (targets, what) => {
    clearErrors(form);
    for (const b of form.querySelectorAll("button")) b.disabled = true;
    try {
      const op = await patch(`${path}?updateMask=traffic`, { traffic: targets });
      await followOperation(op, (_, s) => (progress.textContent = `${what}… ${s} s`));
      announce(`${what}: done`);
      await rerender();
    } catch (error) {
      progress.textContent = "";
      showErrors(form, error);
      for (const b of form.querySelectorAll("button")) b.disabled = false;
    }
  };
  const rows = revisions.map((revision, index) => {
    const name = shortName(revision.name);
    const current = traffic.get(name) || { percent: 0, tags: [] };
    const ready = (revision.conditions || []).find((c) => c.type === "Ready");
    const percentId = `percent-${index}`;
    const tagId = `tag-${index}`;
    return h(
      "tr",
      { "data-revision": name },
      h("th", { scope: "row" }, h("button", { type: "button", class: "secondary", onclick: () => showRevision(revision) }, name)),
      h("td", {}, when(revision.createTime)),
      h("td", {}, readiness(ready)),
      h(
        "td",
        {},
        h("label", { for: percentId, class: "visually-hidden" }, `Traffic percent for ${name}`),
        h("input", { id: percentId, name: "percent", type: "number", min: 0, max: 100, step: 1, value: current.percent, "data-revision": name })
      ),
      h(
        "td",
        {},
        h("label", { for: tagId, class: "visually-hidden" }, `Tag for ${name}`),
        h("input", { id: tagId, name: "tag", value: current.tags.join(","), "data-revision": name, autocomplete: "off" })
      ),
      h(
        "td",
        {},
        h(
          "button",
          {
            type: "button",
            class: "secondary",
            "aria-label": `Roll back: send all traffic to ${name}`,
            onclick: () => apply(rollbackTargets(name, traffic), `Rolling back to ${name}`),
          },
          "Send 100% here"
        )
      )
    );
  });
  form.append(
    formError(),
    h("div", { "data-field": "traffic" }, h("p", { class: "field-error", role: "alert" })),
    table("Revisions, newest first, with their share of traffic and tags", ["Revision", "Created", "State", "Traffic %", "Tag", "Roll back"], rows),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Apply traffic split"), progress)
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new Map();
    for (const row of form.querySelectorAll("tbody tr[data-revision]")) {
      const percent = Number(row.querySelector('input[name="percent"]').value || 0);
      const tags = row.querySelector('input[name="tag"]').value.split(",").map((t) => t.trim()).filter(Boolean);
      next.set(row.dataset.revision, { percent, tags });
    }
    const targets = targetsFrom(next);
    apply(targets, "Applying the traffic split");
  });
  return form;
}

/**
 * Traffic targets from a map of revision -> {percent, tags}: one target per revision with
 * its percent and first tag, and a 0% target for each further tag.
 */
function targetsFrom(byRevision) {
  const targets = [];
  for (const [revision, entry] of byRevision) {
    if (!entry.percent && !entry.tags.length) continue;
    targets.push({ type: REVISION, revision, percent: entry.percent, tag: entry.tags[0] || undefined });
    for (const tag of entry.tags.slice(1)) targets.push({ type: REVISION, revision, percent: 0, tag });
  }
  return targets;
}

/** All traffic to one revision; every tag stays where it is. */
function rollbackTargets(revision, traffic) {
  const next = new Map();
  for (const [name, entry] of traffic) next.set(name, { percent: 0, tags: entry.tags });
  next.set(revision, { percent: 100, tags: (traffic.get(revision) || { tags: [] }).tags });
  return targetsFrom(next);
}

function revisionDetails(revision) {
  const container = (revision.containers || [])[0] || {};
  const limits = (container.resources && container.resources.limits) || {};
  const scaling = revision.scaling || {};
  const env = (container.env || []).map((e) => {
    const ref = e.valueSource && e.valueSource.secretKeyRef;
    return h(
      "li",
      {},
      h("code", {}, e.name),
      " = ",
      ref ? h("span", {}, "secret ", h("code", {}, ref.secret), ", version ", h("code", {}, ref.version || "latest")) : h("code", {}, e.value || "")
    );
  });
  return h(
    "div",
    { class: "card", "aria-live": "polite" },
    h("h3", {}, shortName(revision.name)),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Image"),
      h("dd", { class: "mono", id: "revision-image" }, container.image || ""),
      h("dt", {}, "Environment"),
      h("dd", {}, env.length ? h("ul", {}, env) : "none"),
      h("dt", {}, "CPU"),
      h("dd", {}, limits.cpu || "default"),
      h("dt", {}, "Memory"),
      h("dd", {}, limits.memory || "default"),
      h("dt", {}, "Scaling"),
      h("dd", {}, `min ${scaling.minInstanceCount || 0}, max ${scaling.maxInstanceCount || "default"}`),
      h("dt", {}, "Concurrency"),
      h("dd", {}, String(revision.maxInstanceRequestConcurrency || "default")),
      h("dt", {}, "Request timeout"),
      h("dd", {}, revision.timeout || "default"),
      h("dt", {}, "Service account"),
      h("dd", {}, revision.serviceAccount || "the project's default")
    )
  );
}

/**
 * The form that deploys a revision: of an existing `service` (PATCH its template), or a new
 * service when `service` is null (POST with serviceId). Shows the operation's progress and
 * the API's errors next to the fields they name.
 */
export function deployForm(ctx, { location, service, onDone }) {
  const template = service ? structuredClone(service.template || {}) : {};
  const container = (template.containers || [])[0] || {};
  const limits = (container.resources && container.resources.limits) || {};
  const plainEnv = (container.env || []).filter((e) => !e.valueSource);
  const secretEnv = (container.env || []).filter((e) => e.valueSource);
  const form = h(
    "form",
    { id: service ? "deploy-form" : "create-form", novalidate: true },
    formError(),
    service ? null : field("Service name", { name: "serviceId", field: "serviceId", required: true, autocomplete: "off", hint: "Lowercase letters, digits and hyphens." }),
    service ? null : field("Region", { name: "location", field: "location", value: location, required: true }),
    field("Container image", {
      name: "image",
      field: "template.containers[0].image",
      required: true,
      value: (container.image || "").split("@")[0],
      hint: "For example 127.0.0.1:5000/hello:v1 (Wharf's registry) or a remote image.",
      spellcheck: "false",
    }),
    field("Environment variables", {
      name: "env",
      type: "textarea",
      field: "template.containers[0].env",
      value: plainEnv.map((e) => `${e.name}=${e.value || ""}`).join("\n"),
      hint: secretEnv.length
        ? `One KEY=VALUE per line. Secret references (${secretEnv.map((e) => e.name).join(", ")}) are kept as they are.`
        : "One KEY=VALUE per line.",
    }),
    h(
      "div",
      { class: "grid" },
      field("CPU", { name: "cpu", field: "template.containers[0].resources.limits.cpu", value: limits.cpu || "", placeholder: "1" }),
      field("Memory", { name: "memory", field: "template.containers[0].resources.limits.memory", value: limits.memory || "", placeholder: "512Mi" }),
      field("Minimum instances", { name: "min", type: "number", min: 0, field: "template.scaling.minInstanceCount", value: (template.scaling && template.scaling.minInstanceCount) || "" }),
      field("Maximum instances", { name: "max", type: "number", min: 0, field: "template.scaling.maxInstanceCount", value: (template.scaling && template.scaling.maxInstanceCount) || "" }),
      field("Concurrency", { name: "concurrency", type: "number", min: 0, field: "template.maxInstanceRequestConcurrency", value: template.maxInstanceRequestConcurrency || "" }),
      field("Request timeout", { name: "timeout", field: "template.timeout", value: template.timeout || "", placeholder: "300s" })
    ),
    service ? field("Send all traffic to the new revision", { name: "promote", type: "checkbox", checked: true }) : null,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit" }, service ? "Deploy" : "Create service"),
      h("p", { class: "progress", role: "status", "data-progress": "" })
    )
  );
  const progress = form.querySelector("[data-progress]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector('button[type="submit"]');
    let env;
    try {
      env = parseEnv(form.env.value);
    } catch (error) {
      return showErrors(form, { message: error.message, fieldViolations: [{ field: "template.containers[0].env", description: error.message }] });
    }
    const newContainer = { ...container, image: form.image.value.trim(), env: [...env, ...secretEnv] };
    const newLimits = { ...limits };
    for (const [key, input] of [["cpu", form.cpu], ["memory", form.memory]]) {
      if (input.value.trim()) newLimits[key] = input.value.trim();
      else delete newLimits[key];
    }
    newContainer.resources = { ...(container.resources || {}), limits: newLimits };
    const newTemplate = { ...template, containers: [newContainer, ...(template.containers || []).slice(1)] };
    delete newTemplate.revision;
    const scaling = { ...(template.scaling || {}) };
    if (form.min.value !== "") scaling.minInstanceCount = Number(form.min.value);
    else delete scaling.minInstanceCount;
    if (form.max.value !== "") scaling.maxInstanceCount = Number(form.max.value);
    else delete scaling.maxInstanceCount;
    newTemplate.scaling = scaling;
    if (form.concurrency.value !== "") newTemplate.maxInstanceRequestConcurrency = Number(form.concurrency.value);
    else delete newTemplate.maxInstanceRequestConcurrency;
    if (form.timeout.value.trim()) newTemplate.timeout = form.timeout.value.trim();
    else delete newTemplate.timeout;

    button.disabled = true;
    try {
      let op;
      let where = location;
      let name;
      if (service) {
        name = shortName(service.name);
        const path = servicePath(ctx, location, name);
        if (form.promote.checked) {
          const tags = new Map();
          for (const [revision, entry] of currentTraffic(service)) tags.set(revision, { percent: 0, tags: entry.tags });
          op = await patch(`${path}?updateMask=template,traffic`, { template: newTemplate, traffic: [{ type: LATEST, percent: 100 }, ...targetsFrom(tags)] });
        } else {
          // The new revision gets no traffic: pin today's split to named revisions.
          const pinned = targetsFrom(currentTraffic(service));
          op = await patch(`${path}?updateMask=template,traffic`, { template: newTemplate, traffic: pinned });
        }
      } else {
        name = form.serviceId.value.trim();
        where = form.location.value.trim();
        if (!name) throw { message: "Service name is required.", fieldViolations: [{ field: "serviceId", description: "Service name is required." }] };
        op = await post(
          `/v2/projects/${encodeURIComponent(ctx.project)}/locations/${encodeURIComponent(where)}/services?serviceId=${encodeURIComponent(name)}`,
          { template: newTemplate }
        );
      }
      await followOperation(op, (_, seconds) => (progress.textContent = `Deploying ${name}… ${seconds} s`));
      progress.textContent = `Deployed ${name}.`;
      announce(`Deployed ${name}`);
      await onDone(where, name);
    } catch (error) {
      progress.textContent = "";
      showErrors(form, error);
      button.disabled = false;
    }
  });
  return form;
}

function logLine(entry) {
  const payload = entry.textPayload || (entry.jsonPayload && (entry.jsonPayload.message || JSON.stringify(entry.jsonPayload))) || "";
  const revision = (entry.resource && entry.resource.labels && entry.resource.labels.revision_name) || "";
  return `${entry.timestamp || ""} ${entry.severity || "DEFAULT"} ${revision} ${payload}`.trimEnd();
}

function logsPanel(ctx, location, name) {
  const output = h("pre", { class: "logs", id: "service-logs", tabindex: "0", "aria-label": `Recent logs of ${name}, newest first` });
  const follow = field("Follow new entries", { name: "follow", type: "checkbox", checked: true });
  const problem = h("div");
  const filter = `resource.type="cloud_run_revision" AND resource.labels.service_name="${name}" AND resource.labels.location="${location}"`;
  let timer = null;
  let stopped = false;
  const load = async () => {
    try {
      const entries = await logEntries(ctx.project, filter, 100);
      output.textContent = entries.length ? entries.map(logLine).join("\n") : "No log entries yet.";
      problem.replaceChildren();
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
    if (!stopped && follow.querySelector("input").checked) timer = setTimeout(load, 2000);
  };
  follow.querySelector("input").addEventListener("change", (event) => {
    clearTimeout(timer);
    if (event.target.checked) load();
  });
  ctx.onCleanup(() => {
    stopped = true;
    clearTimeout(timer);
  });
  load();
  return h("div", {}, follow, problem, output);
}

const ROLES = ["roles/run.invoker", "roles/run.viewer", "roles/run.developer", "roles/run.admin"];

async function iamPanel(path) {
  const wrapper = h("div");
  let policy;
  try {
    policy = await get(`${path}:getIamPolicy`);
  } catch (error) {
    wrapper.append(errorBox(error));
    return wrapper;
  }
  const bindings = (policy && policy.bindings) || [];
  const rows = bindings.flatMap((b) => (b.members || []).map((m) => h("tr", {}, h("td", {}, m), h("td", {}, b.role))));
  const form = h(
    "form",
    { id: "grant-form", novalidate: true },
    formError(),
    h(
      "div",
      { class: "grid" },
      field("Member", { name: "member", field: "policy.bindings", placeholder: "user:alice@example.com or allUsers", autocomplete: "off" }),
      h(
        "div",
        { class: "field" },
        h("label", { for: "grant-role" }, "Role"),
        h("select", { id: "grant-role", name: "role" }, ROLES.map((r) => h("option", { value: r }, r)))
      )
    ),
    h("button", { type: "submit" }, "Grant")
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const member = form.member.value.trim();
    const role = form.role.value;
    const next = bindings.map((b) => ({ role: b.role, members: [...(b.members || [])] }));
    const existing = next.find((b) => b.role === role);
    if (existing) existing.members.push(member);
    else next.push({ role, members: [member] });
    try {
      await post(`${path}:setIamPolicy`, { policy: { bindings: next, etag: policy.etag } });
      announce(`Granted ${role} to ${member}`);
      replace(wrapper, ...(await iamPanel(path)).childNodes);
    } catch (error) {
      showErrors(form, error);
    }
  });
  wrapper.append(table("Members with a role on this service (project-wide grants also apply)", ["Member", "Role"], rows), form);
  return wrapper;
}

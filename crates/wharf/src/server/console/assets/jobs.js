// Jobs: the list with a create form, a job's page with "execute" (with overrides), its
// executions with task counts and states that refresh while they run, an execution's tasks
// and their logs.

import { followOperation, get, logEntries, post } from "./api.js";
import { announce, clearErrors, errorBox, field, formError, h, parseEnv, readiness, replace, segment, shortName, showErrors, table, when } from "./ui.js";

const jobsPath = (ctx, location) => `/v2/projects/${encodeURIComponent(ctx.project)}/locations/${encodeURIComponent(location)}/jobs`;

export async function renderJobs(main, ctx) {
  const answer = await get(jobsPath(ctx, "-"));
  const rows = ((answer && answer.jobs) || []).map((job) => {
    const name = shortName(job.name);
    const region = segment(job.name, "locations");
    const last = job.latestCreatedExecution;
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, h("a", { href: `#/jobs/${encodeURIComponent(region)}/${encodeURIComponent(name)}` }, name)),
      h("td", {}, region),
      h("td", {}, String(job.executionCount || 0)),
      h("td", {}, last ? `${shortName(last.name)} (${when(last.createTime)})` : "never run")
    );
  });
  replace(
    main,
    h("h1", {}, "Jobs"),
    table(`Jobs in project ${ctx.project}`, ["Name", "Region", "Executions", "Last execution"], rows),
    h("section", { "aria-labelledby": "create-job-heading" }, h("h2", { id: "create-job-heading" }, "Create a job"), createJobForm(ctx))
  );
}

/** The create-job form: POST .../jobs?jobId=, then follows the operation to the job's page. */
function createJobForm(ctx) {
  const form = h(
    "form",
    { id: "create-job-form", novalidate: true },
    formError(),
    h(
      "div",
      { class: "grid" },
      field("Job name", { name: "jobId", field: "jobId", required: true, autocomplete: "off", hint: "Lowercase letters, digits and hyphens." }),
      field("Region", { name: "region", field: "parent", value: "us-central1", autocomplete: "off" })
    ),
    field("Container image", { name: "image", field: "template.template.containers[0].image", required: true, autocomplete: "off", hint: "From Wharf's registry (host:port/name:tag) or a remote registry." }),
    field("Arguments", { name: "args", field: "template.template.containers[0].args", autocomplete: "off", hint: "Space-separated; empty runs the image's command as it is." }),
    field("Environment", { name: "env", type: "textarea", field: "template.template.containers[0].env", hint: "One KEY=VALUE per line." }),
    h(
      "div",
      { class: "grid" },
      field("Tasks", { name: "taskCount", type: "number", min: 1, field: "template.taskCount", placeholder: "1" }),
      field("Parallelism", { name: "parallelism", type: "number", min: 0, field: "template.parallelism", placeholder: "all" }),
      field("Retries per task", { name: "maxRetries", type: "number", min: 0, field: "template.template.maxRetries", placeholder: "3" }),
      field("Task timeout", { name: "timeout", field: "template.template.timeout", placeholder: "600s" }),
      field("Memory", { name: "memory", field: "template.template.containers[0].resources.limits.memory", placeholder: "512Mi" })
    ),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create job"), h("p", { class: "progress", role: "status", "data-progress": "" }))
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const progress = form.querySelector("[data-progress]");
    const button = form.querySelector("button[type=submit]");
    const container = { image: form.image.value.trim() };
    try {
      const env = parseEnv(form.env.value);
      if (env.length) container.env = env;
    } catch (error) {
      return showErrors(form, { message: error.message, fieldViolations: [{ field: "template.template.containers[0].env", description: error.message }] });
    }
    if (form.args.value.trim()) container.args = form.args.value.trim().split(/\s+/);
    if (form.memory.value.trim()) container.resources = { limits: { memory: form.memory.value.trim() } };
    const task = { containers: [container] };
    if (form.maxRetries.value) task.maxRetries = Number(form.maxRetries.value);
    if (form.timeout.value.trim()) task.timeout = form.timeout.value.trim();
    const template = { template: task };
    if (form.taskCount.value) template.taskCount = Number(form.taskCount.value);
    if (form.parallelism.value) template.parallelism = Number(form.parallelism.value);
    const region = form.region.value.trim() || "us-central1";
    const jobId = form.jobId.value.trim();
    button.disabled = true;
    try {
      const op = await post(`${jobsPath(ctx, region)}?jobId=${encodeURIComponent(jobId)}`, { template });
      await followOperation(op, (_, seconds) => {
        progress.textContent = `Creating ${jobId}… ${seconds} s`;
      });
      announce(`Job ${jobId} created.`);
      location.hash = `#/jobs/${encodeURIComponent(region)}/${encodeURIComponent(jobId)}`;
    } catch (error) {
      progress.textContent = "";
      showErrors(form, error);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/** "Succeeded", "Failed", "Running", from an execution's counts and conditions. */
function executionState(execution) {
  const completed = (execution.conditions || []).find((c) => c.type === "Completed");
  if (completed && completed.state === "CONDITION_SUCCEEDED") return h("span", { class: "state ok" }, "Succeeded");
  if (completed && completed.state === "CONDITION_FAILED") return h("span", { class: "state failed", title: completed.message || "" }, "Failed");
  if (execution.cancelledCount) return h("span", { class: "state failed" }, "Cancelled");
  return h("span", { class: "state pending" }, "Running");
}

export async function renderJob(main, ctx, location, name) {
  const path = `${jobsPath(ctx, location)}/${encodeURIComponent(name)}`;
  const job = await get(path);
  const task = (job.template && job.template.template) || {};
  const container = (task.containers || [])[0] || {};
  const executions = h("div", { id: "executions" });
  const detail = h("div", { id: "execution-detail" });
  let timer = null;
  let stopped = false;
  ctx.onCleanup(() => {
    stopped = true;
    clearTimeout(timer);
  });

  const showExecution = async (execution) => {
    const executionName = shortName(execution.name);
    try {
      const [tasks, entries] = await Promise.all([
        get(`${path}/executions/${encodeURIComponent(executionName)}/tasks`),
        logEntries(
          ctx.project,
          `resource.type="cloud_run_job" AND resource.labels.job_name="${name}" AND labels."run.googleapis.com/execution_name"="${executionName}"`,
          200
        ),
      ]);
      const taskRows = ((tasks && tasks.tasks) || []).map((t) => {
        const done = (t.conditions || []).find((c) => c.type === "Completed");
        return h(
          "tr",
          {},
          h("td", {}, String(t.index || 0)),
          h("td", {}, readiness(done)),
          h("td", {}, String(t.retried || 0)),
          h("td", {}, t.lastAttemptResult ? String(t.lastAttemptResult.exitCode || 0) : "")
        );
      });
      const lines = entries
        .reverse()
        .map((e) => `${e.timestamp || ""} task ${(e.labels && e.labels["run.googleapis.com/task_index"]) || "?"} ${e.textPayload || JSON.stringify(e.jsonPayload || {})}`);
      replace(
        detail,
        h("h3", {}, `Execution ${executionName}`),
        table("Tasks", ["Index", "State", "Retries", "Exit code"], taskRows),
        h("h4", {}, "Task logs"),
        h("pre", { class: "logs", id: "execution-logs", tabindex: "0", "aria-label": `Logs of ${executionName}, oldest first` }, lines.length ? lines.join("\n") : "No log entries yet.")
      );
    } catch (error) {
      replace(detail, errorBox(error));
    }
  };

  let selected = null;
  const loadExecutions = async () => {
    let answer;
    try {
      answer = await get(`${path}/executions`);
    } catch (error) {
      replace(executions, errorBox(error));
      return;
    }
    const list = (answer && answer.executions) || [];
    const rows = list.map((execution) =>
      h(
        "tr",
        {},
        h(
          "th",
          { scope: "row" },
          h("button", { type: "button", class: "secondary", onclick: () => { selected = execution.name; showExecution(execution); } }, shortName(execution.name))
        ),
        h("td", {}, when(execution.createTime)),
        h("td", {}, executionState(execution)),
        h("td", {}, `${execution.succeededCount || 0} succeeded, ${execution.failedCount || 0} failed, ${execution.runningCount || 0} running of ${execution.taskCount || 0}`)
      )
    );
    replace(executions, table("Executions, newest first", ["Execution", "Created", "State", "Tasks"], rows));
    const running = list.some((e) => !(e.conditions || []).some((c) => c.type === "Completed" && c.state !== "CONDITION_PENDING" && c.state !== "CONDITION_RECONCILING"));
    const current = list.find((e) => e.name === selected);
    if (current) await showExecution(current);
    if (running && !stopped) timer = setTimeout(loadExecutions, 1500);
  };

  const form = h(
    "form",
    { id: "execute-form", novalidate: true },
    formError(),
    field("Environment overrides", { name: "env", type: "textarea", field: "overrides.containerOverrides[0].env", hint: "One KEY=VALUE per line; added to the job's environment for this execution." }),
    field("Arguments override", { name: "args", field: "overrides.containerOverrides[0].args", hint: "Space-separated; empty keeps the job's arguments.", autocomplete: "off" }),
    h(
      "div",
      { class: "grid" },
      field("Task count", { name: "taskCount", type: "number", min: 1, field: "overrides.taskCount", placeholder: String(job.template.taskCount || 1) }),
      field("Task timeout", { name: "timeout", field: "overrides.timeout", placeholder: task.timeout || "600s" })
    ),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Execute"), h("p", { class: "progress", role: "status", "data-progress": "" }))
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const progress = form.querySelector("[data-progress]");
    const overrides = {};
    try {
      const env = parseEnv(form.env.value);
      const args = form.args.value.trim() ? form.args.value.trim().split(/\s+/) : [];
      if (env.length || args.length) overrides.containerOverrides = [{ env, args }];
    } catch (error) {
      return showErrors(form, { message: error.message, fieldViolations: [{ field: "overrides.containerOverrides[0].env", description: error.message }] });
    }
    if (form.taskCount.value) overrides.taskCount = Number(form.taskCount.value);
    if (form.timeout.value.trim()) overrides.timeout = form.timeout.value.trim();
    try {
      const op = await post(`${path}:run`, Object.keys(overrides).length ? { overrides } : {});
      const started = op.metadata && op.metadata.name ? shortName(op.metadata.name) : "";
      if (op.metadata && op.metadata.name) selected = op.metadata.name;
      progress.textContent = started ? `Started execution ${started}.` : "Execution started.";
      announce(progress.textContent);
      clearTimeout(timer);
      await loadExecutions();
    } catch (error) {
      showErrors(form, error);
    }
  });

  replace(
    main,
    h("p", {}, h("a", { href: "#/jobs" }, "Jobs"), " / ", name),
    h("h1", {}, name),
    h(
      "div",
      { class: "card" },
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Region"),
        h("dd", {}, location),
        h("dt", {}, "Image"),
        h("dd", { class: "mono" }, container.image || ""),
        h("dt", {}, "Tasks"),
        h("dd", {}, `${job.template.taskCount || 1}, ${job.template.parallelism || "all"} at once, ${task.maxRetries || 0} retries each`),
        h("dt", {}, "State"),
        h("dd", {}, readiness(job.terminalCondition))
      )
    ),
    h("section", { "aria-labelledby": "execute-heading" }, h("h2", { id: "execute-heading" }, "Execute"), form),
    h("section", { "aria-labelledby": "executions-heading" }, h("h2", { id: "executions-heading" }, "Executions"), executions, detail)
  );
  await loadExecutions();
}

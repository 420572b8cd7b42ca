// The console's only way to the server: Wharf's own REST API, authenticated by the session
// cookie, with the session's CSRF token on every change. Errors are the API's
// google.rpc.Status, kept whole so a page can show them next to the field at fault.

let csrfToken = null;

export function setCsrfToken(token) {
  csrfToken = token;
}

/** An API answer that was not 2xx: the HTTP status and the google.rpc.Status it carried. */
export class ApiError extends Error {
  constructor(httpStatus, body, text) {
    const error = body && body.error ? body.error : null;
    super(error && error.message ? error.message : `HTTP ${httpStatus}: ${text || "no body"}`);
    this.httpStatus = httpStatus;
    this.status = error ? error.status : "";
    this.fieldViolations = [];
    for (const detail of (error && error.details) || []) {
      for (const v of detail.fieldViolations || []) {
        this.fieldViolations.push({ field: v.field || "", description: v.description || this.message });
      }
    }
  }
}

/** One API call; resolves to the parsed JSON body (or null), rejects with ApiError. */
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!response.ok) throw new ApiError(response.status, json, text);
  return json;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body === undefined ? {} : body);
export const patch = (path, body) => call("PATCH", path, body);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follows a long-running operation until it is done, calling onProgress(operation, seconds)
 * after each look. Resolves to the finished operation; rejects with an ApiError built from
 * the operation's error when it failed.
 */
export async function followOperation(operation, onProgress) {
  const started = Date.now();
  let op = operation;
  while (!op.done) {
    onProgress(op, Math.round((Date.now() - started) / 1000));
    await sleep(400);
    op = await get(`/v2/${op.name}`);
  }
  onProgress(op, Math.round((Date.now() - started) / 1000));
  if (op.error) {
    throw new ApiError(400, { error: { message: op.error.message, status: "", details: op.error.details || [] } }, "");
  }
  return op;
}

/** Log entries of a project, newest first (Cloud Logging's entries:list). */
export async function logEntries(project, filter, pageSize) {
  const answer = await post("/v2/entries:list", {
    resourceNames: [`projects/${project}`],
    filter,
    orderBy: "timestamp desc",
    pageSize: pageSize || 50,
  });
  return (answer && answer.entries) || [];
}

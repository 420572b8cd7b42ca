// Images in Wharf's registry (repositories, tags, digests, sizes) and secrets (names and
// versions; a value is fetched only when its "Reveal" button is pressed, through the
// version's :access with the signed-in user's rights, and shown until "Hide").

import { get } from "./api.js";
import { errorBox, h, replace, shortName, table, when } from "./ui.js";

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = Number(n || 0);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export async function renderImages(main) {
  const answer = await get("/wharf/v1/images");
  const rows = ((answer && answer.images) || []).map((image) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, image.repository),
      h("td", {}, image.tag || "(untagged)"),
      h("td", { class: "mono" }, image.digest),
      h("td", {}, bytes(image.size)),
      h("td", {}, image.updatedAt ? when(new Date(image.updatedAt * 1000).toISOString()) : "")
    )
  );
  replace(
    main,
    h("h1", {}, "Images"),
    table("Images in Wharf's registry", ["Repository", "Tag", "Digest", "Size", "Updated"], rows),
    h("p", { class: "hint" }, "Push with any OCI client (skopeo, crane, docker, podman) to the registry address, or wharf images import.")
  );
}

/** "1 (enabled)" with, for an enabled version, a Reveal button that calls :access. */
function versionItem(secret, version) {
  const label = `${shortName(version.name)} (${(version.state || "").toLowerCase()})`;
  if (version.state !== "ENABLED") return h("li", {}, label);
  const shown = h("span", { class: "revealed", "aria-live": "polite" });
  const button = h("button", { type: "button", class: "secondary reveal", "aria-label": `Reveal ${shortName(secret.name)} version ${shortName(version.name)}` }, "Reveal");
  button.addEventListener("click", async () => {
    if (button.dataset.revealed) {
      shown.replaceChildren();
      delete button.dataset.revealed;
      button.textContent = "Reveal";
      return;
    }
    button.disabled = true;
    try {
      const answer = await get(`/v1/${version.name}:access`);
      const data = (answer && answer.payload && answer.payload.data) || "";
      const raw = atob(data);
      let text;
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(raw, (c) => c.charCodeAt(0)));
      } catch (_) {
        text = `(binary, ${raw.length} bytes, base64) ${data}`;
      }
      shown.replaceChildren(h("code", { class: "secret-value" }, text));
      button.dataset.revealed = "yes";
      button.textContent = "Hide";
    } catch (error) {
      shown.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return h("li", { "data-version": shortName(version.name) }, label, " ", button, " ", shown);
}

export async function renderSecrets(main, ctx) {
  const answer = await get(`/v1/projects/${encodeURIComponent(ctx.project)}/secrets`);
  const secrets = (answer && answer.secrets) || [];
  const rows = await Promise.all(
    secrets.map(async (secret) => {
      let versions;
      try {
        const list = await get(`/v1/${secret.name}/versions`);
        const items = ((list && list.versions) || []).map((v) => versionItem(secret, v));
        versions = items.length ? h("ul", { class: "versions" }, items) : "none";
      } catch (error) {
        versions = errorBox(error);
      }
      return h("tr", {}, h("th", { scope: "row" }, shortName(secret.name)), h("td", {}, when(secret.createTime)), h("td", {}, versions));
    })
  );
  replace(
    main,
    h("h1", {}, "Secrets"),
    table(`Secrets in project ${ctx.project}`, ["Name", "Created", "Versions"], rows),
    h("p", { class: "hint" }, "Values stay hidden until you press Reveal; revealing reads the version with your own permissions (secretmanager.versions.access) and is audited like any API call.")
  );
}

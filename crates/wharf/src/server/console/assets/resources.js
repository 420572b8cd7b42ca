// Images in Wharf's registry (repositories, tags, digests, sizes) and secrets (names and
// versions; values are never fetched by the console).

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

export async function renderSecrets(main, ctx) {
  const answer = await get(`/v1/projects/${encodeURIComponent(ctx.project)}/secrets`);
  const secrets = (answer && answer.secrets) || [];
  const rows = await Promise.all(
    secrets.map(async (secret) => {
      let versions;
      try {
        const list = await get(`/v1/${secret.name}/versions`);
        versions = ((list && list.versions) || []).map((v) => `${shortName(v.name)} (${(v.state || "").toLowerCase()})`).join(", ") || "none";
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
    h("p", { class: "hint" }, "The console shows names and versions only, never values. Read a value with wharf secrets versions access.")
  );
}

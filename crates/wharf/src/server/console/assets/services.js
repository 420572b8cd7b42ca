// The Services page: every service of the project (all regions), filterable by name, and a
// form that creates one.

import { get } from "./api.js";
import { deployForm } from "./service.js";
import { field, h, readiness, replace, segment, shortName, table, when } from "./ui.js";

export async function renderServices(main, ctx) {
  const answer = await get(`/v2/projects/${encodeURIComponent(ctx.project)}/locations/-/services`);
  const services = (answer && answer.services) || [];
  const body = h("tbody");
  const rows = services.map((service) => {
    const name = shortName(service.name);
    const region = segment(service.name, "locations");
    return {
      name,
      row: h(
        "tr",
        {},
        h("th", { scope: "row" }, h("a", { href: `#/services/${encodeURIComponent(region)}/${encodeURIComponent(name)}` }, name)),
        h("td", {}, region),
        h("td", {}, service.uri ? h("a", { href: service.uri, rel: "noreferrer", target: "_blank" }, service.uri) : ""),
        h("td", {}, when(service.updateTime)),
        h("td", {}, service.lastModifier || service.creator || ""),
        h("td", {}, readiness(service.terminalCondition))
      ),
    };
  });
  const count = h("p", { "aria-live": "polite", id: "service-count" });
  const filter = field("Filter by name", { name: "filter", type: "search", autocomplete: "off" });
  const applyFilter = () => {
    const needle = filter.querySelector("input").value.trim().toLowerCase();
    const shown = rows.filter((r) => r.name.toLowerCase().includes(needle));
    body.replaceChildren(...shown.map((r) => r.row));
    count.textContent = `${shown.length} of ${rows.length} services`;
  };
  filter.querySelector("input").addEventListener("input", applyFilter);
  const list = table(`Services in project ${ctx.project}`, ["Name", "Region", "URL", "Last deployed", "Deployed by", "State"], []);
  list.querySelector("tbody").replaceWith(body);
  body.id = "services-body";
  applyFilter();
  if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 6 }, "No services yet.")));

  const create = deployForm(ctx, {
    location: "us-central1",
    service: null,
    onDone: (location, name) => {
      window.location.hash = `#/services/${encodeURIComponent(location)}/${encodeURIComponent(name)}`;
    },
  });
  replace(
    main,
    h("h1", {}, "Services"),
    h("section", { "aria-labelledby": "list-heading" }, h("h2", { id: "list-heading" }, "All services"), filter, count, list),
    h("section", { "aria-labelledby": "create-heading" }, h("h2", { id: "create-heading" }, "Create a service"), create)
  );
}

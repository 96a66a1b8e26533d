// What runs can train on: every kind and every registered instance.
import { get } from "./api.js";
import { h, main, when } from "./dom.js";

export async function render() {
  const { items } = await get("/v1/environments");
  main(
    h("h1", {}, "Environments"),
    h(
      "table",
      { id: "environments" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["name", "kind", "", "description", "registered"].map((c) => h("th", {}, c)),
        ),
      ),
      h(
        "tbody",
        {},
        items.map((env) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `/environments/${encodeURIComponent(env.name)}` }, env.name)),
            h("td", {}, env.kind),
            h("td", {}, env.registered ? "instance" : "kind"),
            h("td", {}, env.description),
            h("td", {}, env.registered ? when(env.created_at) : "–"),
          ),
        ),
      ),
    ),
  );
}

// One environment: its configuration and schema, and "try": a few sampled, scored rollouts.
import { get, post } from "./api.js";
import { errorBox, h, main, number, pre } from "./dom.js";

export async function render(parts) {
  const name = parts[1];
  const env = await get(`/v1/environments/${encodeURIComponent(name)}`);
  const results = h("div", { id: "try-results" });
  const form = h(
    "form",
    { id: "try-form", class: "filters" },
    h("label", {}, "model ", h("input", { name: "model", value: "tiny", required: true })),
    h("label", {}, " tasks ", h("input", { name: "tasks", type: "number", min: 1, max: 16, value: 2 })),
    h(
      "label",
      {},
      " samples per task ",
      h("input", { name: "samples_per_prompt", type: "number", min: 1, max: 8, value: 2 }),
    ),
    h(
      "label",
      {},
      " max new tokens ",
      h("input", { name: "max_new_tokens", type: "number", min: 1, max: 512, value: 16 }),
    ),
    h(
      "label",
      {},
      " split ",
      h("select", { name: "split" }, h("option", {}, "train"), h("option", {}, "eval")),
    ),
    " ",
    h("button", { type: "submit", id: "try-button" }, "Try"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(new FormData(form));
    for (const key of ["tasks", "samples_per_prompt", "max_new_tokens"]) body[key] = Number(body[key]);
    results.replaceChildren(h("p", { class: "muted" }, "Sampling… (the first call for a model loads it)"));
    try {
      const { items } = await post(`/v1/environments/${encodeURIComponent(name)}/try`, body);
      results.replaceChildren(
        h(
          "table",
          { id: "try-table" },
          h(
            "tr",
            {},
            ["task", "prompt", "response", "verdict", "reward", "feedback"].map((c) => h("th", {}, c)),
          ),
          items.map((t) =>
            h(
              "tr",
              {},
              h("td", {}, t.task_id),
              h("td", { class: "clip" }, t.prompt),
              h("td", { class: "clip" }, t.response),
              h("td", {}, t.verdict),
              h("td", {}, number(t.reward)),
              h("td", { class: "clip" }, t.feedback ?? ""),
            ),
          ),
        ),
      );
    } catch (error) {
      results.replaceChildren(errorBox(error));
    }
  });
  main(
    h(
      "h1",
      {},
      env.name,
      " ",
      h("small", { class: "muted" }, env.registered ? `instance of ${env.kind}` : "kind"),
    ),
    h("p", {}, env.description),
    h(
      "p",
      {},
      h(
        "a",
        { class: "button", href: `/runs/new?environment=${encodeURIComponent(env.name)}` },
        "Start a run on it",
      ),
    ),
    h("h2", {}, "Try"),
    form,
    results,
    h("h2", {}, "Configuration"),
    pre(env.config),
    h("details", {}, h("summary", {}, "Configuration schema"), pre(env.config_schema)),
  );
}

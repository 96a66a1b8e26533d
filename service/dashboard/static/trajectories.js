// A run's trajectories, filtered by step, verdict and reward, a page at a time.
import { get } from "./api.js";
import { h, main, number } from "./dom.js";
import { pager } from "./runs.js";

const FILTERS = ["step", "verdict", "min_reward", "max_reward"];

export async function render(parts, query) {
  const runId = Number(parts[1]);
  const params = { limit: 50, cursor: query.get("cursor") };
  for (const name of FILTERS) params[name] = query.get(name);
  const page = await get(`/v1/runs/${runId}/trajectories`, params);
  const form = h(
    "form",
    { class: "filters", id: "trajectory-filters", method: "get" },
    field("step", "step", "number", query, { min: 0 }),
    field("verdict", "verdict", "text", query, { placeholder: "ok, wrong_answer, …" }),
    field("min_reward", "reward ≥", "number", query, { step: "any" }),
    field("max_reward", "reward ≤", "number", query, { step: "any" }),
    h("button", { type: "submit" }, "Filter"),
    " ",
    h("a", { href: "?" }, "clear"),
  );
  form.addEventListener("submit", () => {
    for (const input of form.querySelectorAll("input")) if (!input.value) input.disabled = true; // no empty params
  });
  const rows = page.items.map((t) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `/runs/${runId}/trajectories/${t.id}` }, t.id)),
      h("td", {}, t.step),
      h("td", {}, `${t.group_index}.${t.sample_index}`),
      h("td", {}, h("span", { class: `verdict verdict-${t.verdict === "ok" ? "ok" : "bad"}` }, t.verdict)),
      h("td", {}, number(t.reward)),
      h("td", { class: "clip" }, t.prompt),
      h("td", { class: "clip" }, t.response),
      h("td", {}, t.truncated ? "truncated" : ""),
    ),
  );
  main(
    h("h1", {}, h("a", { href: `/runs/${runId}` }, `Run #${runId}`), " · trajectories"),
    form,
    rows.length
      ? h(
          "table",
          { id: "trajectories" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["id", "step", "task.sample", "verdict", "reward", "prompt", "response", ""].map((c) =>
                h("th", {}, c),
              ),
            ),
          ),
          h("tbody", {}, rows),
        )
      : h("p", { class: "muted" }, "No trajectory matches."),
    pager(query, page.next_cursor),
  );
}

function field(name, label, type, query, attrs) {
  return h("label", {}, `${label} `, h("input", { name, type, value: query.get(name) ?? "", ...attrs }));
}

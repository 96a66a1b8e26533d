// One environment: its configuration and schema; "try" (a few sampled, scored responses)
// and "probe" (the teacher-student gap before any training). Neither stores anything.
import { get, post } from "./api.js";
import { errorBox, h, main, number, pre } from "./dom.js";

export async function render(parts) {
  const name = parts[1];
  const env = await get(`/v1/environments/${encodeURIComponent(name)}`);
  const path = `/v1/environments/${encodeURIComponent(name)}`;
  const tryForm = form(
    "try",
    [numeric("tasks", 2, 16), numeric("samples_per_prompt", 2, 8), numeric("max_new_tokens", 16, 512)],
    h("select", { name: "split" }, h("option", {}, "train"), h("option", {}, "eval")),
  );
  const probeForm = form("probe", [
    numeric("groups", 4, 16),
    numeric("samples_per_prompt", 8, 16),
    numeric("max_new_tokens", 16, 512),
  ]);
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
    tryForm,
    h("h2", {}, "Probe ", h("small", { class: "muted" }, "(is there a gap for self-distillation to close?)")),
    probeForm,
    h("h2", {}, "Configuration"),
    pre(env.config),
    h("details", {}, h("summary", {}, "Configuration schema"), pre(env.config_schema)),
  );
  submit(tryForm, `${path}/try`, ({ items }) =>
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
          [t.task_id, t.prompt, t.response, t.verdict, number(t.reward), t.feedback ?? ""].map((v) =>
            h("td", { class: "clip" }, v),
          ),
        ),
      ),
    ),
  );
  submit(probeForm, `${path}/probe`, (report) =>
    h(
      "table",
      { id: "probe-table", class: "facts" },
      Object.entries(report).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "number" ? number(v) : v))),
    ),
  );
}

function numeric(name, value, max) {
  return [name, h("input", { name, type: "number", min: 1, max, value })];
}

function form(id, fields, ...extra) {
  return h(
    "form",
    { id: `${id}-form`, class: "filters" },
    h("label", {}, "model ", h("input", { name: "model", value: "tiny", required: true })),
    fields.map(([name, input]) => h("label", {}, ` ${name.replaceAll("_", " ")} `, input)),
    extra.map((input) => h("label", {}, ` ${input.name} `, input)),
    " ",
    h("button", { type: "submit", id: `${id}-button` }, id[0].toUpperCase() + id.slice(1)),
    h("div", { id: `${id}-results` }),
  );
}

// POST the form's fields (numbers as numbers) to `path`, and show(answer) under it.
function submit(node, path, show) {
  const results = node.querySelector("div");
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(new FormData(node));
    for (const input of node.querySelectorAll("input[type=number]")) body[input.name] = Number(input.value);
    results.replaceChildren(h("p", { class: "muted" }, "Sampling… (loading the model first)"));
    try {
      results.replaceChildren(show(await post(path, body)));
    } catch (error) {
      results.replaceChildren(errorBox(error));
    }
  });
}

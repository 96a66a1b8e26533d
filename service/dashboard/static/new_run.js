// Start a run: environment, model, algorithm and steps, then any configuration override,
// from a form generated from the run-config schema (GET /v1/runs/config-schema).
import { get, post } from "./api.js";
import { errorBox, h, main } from "./dom.js";
import { fill, overrides, schemaFields } from "./schema_form.js";

export async function render(_parts, query) {
  const [{ json_schema: schema, presets, reserved }, environments] = await Promise.all([
    get("/v1/runs/config-schema"),
    get("/v1/environments"),
  ]);
  const chosen = query.get("environment") ?? "arithmetic";
  const algorithm = h(
    "select",
    { name: "algorithm", id: "algorithm" },
    Object.keys(presets).map((name) => h("option", { value: name }, name)),
  );
  const steps = h("input", { name: "steps", id: "steps", type: "number", min: 1, step: 1 });
  const config = h("div", { class: "config" }, schemaFields(schema, h, [...reserved, "steps"]));
  const message = h("div", { id: "form-message" });
  const form = h(
    "form",
    { id: "new-run" },
    h(
      "label",
      { class: "field" },
      h("span", {}, "environment"),
      h(
        "select",
        { name: "environment", id: "environment" },
        environments.items.map((env) =>
          h(
            "option",
            { value: env.name, selected: env.name === chosen },
            `${env.name}${env.registered ? "" : " (kind)"}`,
          ),
        ),
      ),
    ),
    h(
      "label",
      { class: "field" },
      h("span", {}, "model"),
      h("input", { name: "model", id: "model", value: query.get("model") ?? "tiny", required: true }),
    ),
    h("label", { class: "field" }, h("span", {}, "algorithm"), algorithm),
    h("label", { class: "field" }, h("span", {}, "steps"), steps),
    h(
      "h2",
      {},
      "Configuration ",
      h("small", { class: "muted" }, "(the preset's values; only what you change is sent)"),
    ),
    config,
    h("p", {}, h("button", { type: "submit", id: "create-run" }, "Start run")),
    message,
  );
  const showPreset = () => {
    const preset = presets[algorithm.value];
    fill(config, preset);
    steps.placeholder = preset.steps;
  };
  algorithm.addEventListener("change", showPreset);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const body = {
        environment: form.environment.value,
        model: form.model.value,
        algorithm: algorithm.value,
        config: overrides(config),
      };
      if (steps.value) body.steps = Number(steps.value);
      const run = await post("/v1/runs", body);
      location.href = `/runs/${run.id}`;
    } catch (error) {
      message.replaceChildren(errorBox(error));
    }
  });
  main(h("h1", {}, "New run"), form);
  showPreset();
}

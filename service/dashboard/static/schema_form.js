// A form generated from a JSON schema (pydantic's), for nested configuration overrides.
// Every leaf is an input named by its path ("loss.distill.alpha") showing the preset's
// value; only the fields the user changed are sent, the preset fills in the rest.

export function schemaFields(schema, h, skip = []) {
  const defs = schema.$defs ?? {};
  return Object.entries(schema.properties)
    .filter(([name]) => !skip.includes(name))
    .map(([name, property]) => field(name, property, defs, h));
}

function resolve(property, defs) {
  if (property.$ref) return { ...defs[property.$ref.split("/").pop()], ...property, $ref: undefined };
  return property;
}

function field(path, property, defs, h) {
  const p = resolve(property, defs);
  const name = path.split(".").pop();
  if (p.type === "object" && p.properties) {
    return h(
      "details",
      { class: "group" },
      h("summary", {}, name),
      Object.entries(p.properties).map(([key, child]) => field(`${path}.${key}`, child, defs, h)),
    );
  }
  const options = (p.anyOf ?? []).filter((o) => o.type !== "null").map((o) => resolve(o, defs));
  const nullable = (p.anyOf ?? []).some((o) => o.type === "null");
  const leaf = options.length === 1 ? { ...options[0], description: p.description } : p;
  const attrs = {
    name: path,
    id: `field-${path}`,
    dataset: { path, kind: kindOf(leaf, options), nullable: nullable ? "yes" : "" },
  };
  let input;
  if (attrs.dataset.kind === "enum") {
    const values = nullable ? ["", ...leaf.enum] : leaf.enum;
    input = h(
      "select",
      attrs,
      values.map((v) => h("option", { value: v }, v === "" ? "(none)" : v)),
    );
  } else if (attrs.dataset.kind === "boolean") {
    input = h("input", { ...attrs, type: "checkbox" });
  } else if (attrs.dataset.kind === "json") {
    input = h("textarea", { ...attrs, rows: 2 });
  } else {
    const numeric = attrs.dataset.kind === "number" || attrs.dataset.kind === "integer";
    input = h("input", {
      ...attrs,
      type: numeric ? "number" : "text",
      step: attrs.dataset.kind === "integer" ? 1 : "any",
      min: leaf.minimum ?? leaf.exclusiveMinimum,
      max: leaf.maximum ?? leaf.exclusiveMaximum,
      placeholder: nullable ? "(none)" : "",
    });
  }
  input.addEventListener("input", () => {
    input.dataset.dirty = "yes";
  });
  input.addEventListener("change", () => {
    input.dataset.dirty = "yes";
  });
  return h(
    "label",
    { class: "field", title: p.description ?? "" },
    h("span", {}, name),
    input,
    p.description ? h("small", { class: "muted" }, p.description) : null,
  );
}

function kindOf(leaf, options) {
  if (options.length > 1) return "json";
  if (leaf.enum) return "enum";
  if (["boolean", "integer", "number", "string"].includes(leaf.type)) return leaf.type;
  return "json";
}

// Show `values` (a preset) in every field the user has not changed.
export function fill(form, values) {
  for (const input of form.querySelectorAll("[data-path]")) {
    if (input.dataset.dirty) continue;
    const value = input.dataset.path.split(".").reduce((at, key) => at?.[key], values);
    if (input.type === "checkbox") input.checked = Boolean(value);
    else if (input.dataset.kind === "json") input.value = value === undefined ? "" : JSON.stringify(value);
    else input.value = value === null || value === undefined ? "" : value;
  }
}

// The nested overrides of the changed fields; throws on a field whose JSON does not parse.
export function overrides(form) {
  const result = {};
  for (const input of form.querySelectorAll("[data-path][data-dirty]")) {
    const keys = input.dataset.path.split(".");
    let at = result;
    for (const key of keys.slice(0, -1)) at = at[key] ??= {};
    at[keys[keys.length - 1]] = valueOf(input);
  }
  return result;
}

function valueOf(input) {
  const kind = input.dataset.kind;
  if (kind === "boolean") return input.checked;
  if (input.value === "" && input.dataset.nullable) return null;
  if (kind === "integer" || kind === "number") return Number(input.value);
  if (kind === "json") {
    try {
      return JSON.parse(input.value);
    } catch {
      throw new Error(`${input.dataset.path}: not valid JSON`);
    }
  }
  return input.value;
}

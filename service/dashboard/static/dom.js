// Building pages: a small element builder and the formats every page shares.

// h("a", {href: "/"}, "Runs") -> <a href="/">Runs</a>; children may be nodes, text or arrays.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function main(...children) {
  const node = document.getElementById("main");
  node.replaceChildren(
    ...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false),
  );
  return node;
}

export function number(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return Number(value).toPrecision(digits);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function status(value) {
  return h("span", { class: `status status-${value}` }, value);
}

// An API error as a page shows it; a 401/403 points at the token page.
export function errorBox(error) {
  const needsToken = error.status === 401 || error.code === "read_only_token";
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, `${error.status ?? ""} ${error.code ?? "error"}: `),
    error.message,
    needsToken
      ? h("p", {}, "This server needs an API token: ", h("a", { href: "/token" }, "enter it"), ".")
      : null,
    Array.isArray(error.details)
      ? h(
          "ul",
          {},
          error.details.map((d) => h("li", {}, `${(d.loc ?? []).join(".")}: ${d.msg ?? JSON.stringify(d)}`)),
        )
      : null,
  );
}

// The JSON of `value`, readable.
export function pre(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

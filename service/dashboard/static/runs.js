// The run list: status, algorithm, environment, model and progress, a page at a time.
import { get } from "./api.js";
import { h, main, number, status, when } from "./dom.js";

const REFRESH_MS = 5000;

export async function render(_parts, query) {
  const cursor = query.get("cursor");
  const filter = query.get("status") ?? "";
  const params = { limit: 50, cursor, status: filter };
  const page = await get("/v1/runs", params);
  const rows = page.items.map(row);
  const compare = h(
    "button",
    {
      type: "button",
      id: "compare-selected",
      onclick: () => {
        const ids = [...document.querySelectorAll("input[name=compare]:checked")].map((box) => box.value);
        if (ids.length) location.href = `/compare?runs=${ids.join(",")}`;
      },
    },
    "Compare selected",
  );
  const statuses = ["", "queued", "running", "stopped", "failed", "cancelled", "completed"];
  const picker = h(
    "select",
    {
      id: "status-filter",
      onchange: (event) => {
        location.search = event.target.value ? `?status=${event.target.value}` : "";
      },
    },
    statuses.map((s) => h("option", { value: s, selected: s === filter }, s || "every status")),
  );
  main(
    h("h1", {}, "Runs"),
    h(
      "p",
      { class: "toolbar" },
      h("a", { class: "button", href: "/runs/new" }, "New run"),
      " ",
      compare,
      " ",
      picker,
    ),
    rows.length
      ? h(
          "table",
          { id: "runs" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              [
                "",
                "run",
                "status",
                "algorithm",
                "environment",
                "model",
                "progress",
                "held-out acc.",
                "samples",
                "updated",
              ].map((c) => h("th", {}, c)),
            ),
          ),
          h("tbody", {}, rows),
        )
      : h("p", { class: "muted" }, "No runs yet."),
    pager(query, page.next_cursor),
  );
  refreshWhileActive(params, page.items);
}

function row(run) {
  return h(
    "tr",
    { dataset: { run: run.id } },
    h(
      "td",
      {},
      h("input", {
        type: "checkbox",
        name: "compare",
        value: run.id,
        "aria-label": `compare run ${run.id}`,
      }),
    ),
    h("td", {}, h("a", { href: `/runs/${run.id}` }, `#${run.id}`)),
    h("td", {}, status(run.status)),
    h("td", {}, run.algorithm),
    h("td", {}, h("a", { href: `/environments/${encodeURIComponent(run.environment)}` }, run.environment)),
    h("td", {}, run.model),
    h("td", {}, progress(run)),
    h("td", {}, number(run.eval.latest)),
    h("td", {}, number(run.samples_seen)),
    h("td", {}, when(run.updated_at)),
  );
}

// While a listed run is queued or running, the list is read again every few seconds;
// the rows are replaced, the ticked boxes kept.
function refreshWhileActive(params, items) {
  const active = new Set(["queued", "running"]);
  if (!items.some((run) => active.has(run.status))) return;
  setTimeout(async () => {
    const fresh = await get("/v1/runs", params);
    for (const run of fresh.items) {
      const old = document.querySelector(`#runs tr[data-run="${run.id}"]`);
      if (!old) continue;
      const ticked = old.querySelector("input").checked;
      const replacement = row(run);
      replacement.querySelector("input").checked = ticked;
      old.replaceWith(replacement);
    }
    refreshWhileActive(params, fresh.items);
  }, REFRESH_MS);
}

function progress(run) {
  const share = run.steps ? run.steps_done / run.steps : 0;
  return h(
    "span",
    { class: "progress", title: `${run.steps_done} of ${run.steps} steps` },
    h("progress", { max: run.steps || 1, value: run.steps_done }),
    ` ${run.steps_done}/${run.steps} (${Math.round(share * 100)}%)`,
  );
}

// Cursor paging: "next" from the API's cursor, "first" back to the start.
export function pager(query, nextCursor) {
  const first = new URLSearchParams(query);
  first.delete("cursor");
  const next = new URLSearchParams(query);
  if (nextCursor) next.set("cursor", nextCursor);
  return h(
    "p",
    { class: "pager" },
    query.get("cursor") ? h("a", { href: `?${first}` }, "« first page") : null,
    " ",
    nextCursor ? h("a", { href: `?${next}`, rel: "next" }, "next page »") : null,
  );
}

// Several runs on one chart, against samples by default (self-distillation vs GRPO), with
// an export as PNG or SVG. The URL holds the choice: /compare?runs=1,2&metric=...&x=...
import { get } from "./api.js";
import { againstSamples, draw } from "./charts.js";
import { h, main } from "./dom.js";

const POINTS = 1000;

export async function render(_parts, query) {
  const ids = (query.get("runs") ?? "")
    .split(",")
    .map(Number)
    .filter((id) => Number.isInteger(id) && id > 0);
  const metric = query.get("metric") ?? "eval_accuracy";
  const x = query.get("x") === "steps" ? "steps" : "samples";
  const runs = await Promise.all(ids.map((id) => get(`/v1/runs/${id}`)));
  const series = await Promise.all(ids.map((id) => get(`/v1/runs/${id}/metrics`, { points: POINTS })));
  const names = [...new Set(series.flatMap((s) => Object.keys(s.series)))].sort();
  if (!names.includes(metric)) names.unshift(metric);

  const form = h(
    "form",
    { class: "filters", id: "compare-form", method: "get" },
    h(
      "label",
      {},
      "runs ",
      h("input", { name: "runs", value: ids.join(","), placeholder: "1,2", pattern: "[0-9, ]*" }),
    ),
    h(
      "label",
      {},
      " metric ",
      h(
        "select",
        { name: "metric" },
        names.map((n) => h("option", { value: n, selected: n === metric }, n)),
      ),
    ),
    h(
      "label",
      {},
      " against ",
      h(
        "select",
        { name: "x" },
        ["samples", "steps"].map((v) => h("option", { value: v, selected: v === x }, v)),
      ),
    ),
    " ",
    h("button", { type: "submit" }, "Show"),
  );
  const chart = h("div", { class: "chart wide", id: "compare-chart" });
  const exportButtons = h(
    "p",
    { class: "toolbar" },
    "Export: ",
    ["png", "svg"].map((format) =>
      h(
        "button",
        { type: "button", id: `export-${format}`, onclick: () => exportAs(chart, format, metric) },
        format.toUpperCase(),
      ),
    ),
  );
  main(
    h("h1", {}, "Compare runs"),
    form,
    ids.length
      ? [chart, exportButtons, legend(runs)]
      : h("p", { class: "muted" }, "Name two or more runs, or pick them on the run list."),
  );
  if (!ids.length) return;
  const traces = runs.map((run, i) => {
    const points = series[i].series[metric] ?? [];
    return { name: label(run), points: x === "samples" ? againstSamples(points, run.config) : points };
  });
  await draw(chart, metric, traces, x === "samples" ? "samples" : "step", {
    height: 460,
    showlegend: true,
    legend: { orientation: "h", y: -0.18 },
  });
}

function label(run) {
  return `#${run.id} ${run.algorithm} · ${run.environment} · ${run.model}`;
}

function legend(runs) {
  return h(
    "ul",
    { class: "muted" },
    runs.map((run) =>
      h(
        "li",
        {},
        h("a", { href: `/runs/${run.id}` }, label(run)),
        ` (${run.status}, ${run.steps_done}/${run.steps} steps)`,
      ),
    ),
  );
}

// Download the chart as an image, and keep its data URL on the node (the tests read it).
async function exportAs(node, format, metric) {
  const options = { format, width: 1000, height: 560, filename: `opsd-compare-${metric}` };
  node.dataset.exported = await window.Plotly.toImage(node, options);
  await window.Plotly.downloadImage(node, options);
}

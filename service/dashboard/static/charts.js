// Charts of step metrics with plotly.js (served from the installed `plotly` package).
// Known metrics are grouped into panels; any other metric the API returns gets a panel of
// its own, so new metrics show up without a change here.

export const PANELS = [
  { title: "Reward", metrics: ["reward_mean", "ok_fraction"] },
  { title: "Held-out accuracy", metrics: ["eval_accuracy"] },
  { title: "Loss", metrics: ["loss", "distill_loss", "grpo_loss"] },
  {
    title: "Divergence",
    metrics: ["log_ratio_mean", "teacher_gap", "sampler_logprob_gap_mean", "advantage_abs_mean"],
  },
  { title: "Response length (tokens)", metrics: ["response_tokens_mean"] },
  { title: "Run health", metrics: ["teacher_signal_frac", "truncated_frac", "entropy"] },
  { title: "Tool calls", metrics: ["turns_mean", "tool_calls_mean", "tool_errors_mean"] },
  { title: "Steps per second", metrics: ["steps_per_s"] },
  { title: "Policy staleness (steps)", metrics: ["policy_lag"] },
  { title: "Seconds per step", metrics: ["sample_seconds", "train_seconds"] },
];
const NOT_CHARTED = new Set(["samples_seen"]); // the x axis "samples"

// The panels that have data: known panels with the metrics present, then one per other metric.
export function panelsFor(names) {
  const present = new Set(names);
  const known = new Set(PANELS.flatMap((panel) => panel.metrics));
  const panels = PANELS.map((panel) => ({
    ...panel,
    metrics: panel.metrics.filter((m) => present.has(m)),
  })).filter((panel) => panel.metrics.length);
  const others = [...present].filter((m) => !known.has(m) && !NOT_CHARTED.has(m)).sort();
  return [...panels, ...others.map((m) => ({ title: m, metrics: [m] }))];
}

const LAYOUT = {
  margin: { l: 50, r: 10, t: 30, b: 80 },
  height: 290,
  legend: { orientation: "h", y: -0.4 },
  font: { size: 11 },
};
export const CONFIG = {
  responsive: true,
  displaylogo: false,
  toImageButtonOptions: { format: "png", filename: "opsd", scale: 2 },
};

// Draw (or redraw) a chart of `traces` = [{name, points: [[x, y], ...]}].
export function draw(node, title, traces, xTitle, extra = {}) {
  const data = traces.map((trace) => ({
    type: "scatter",
    mode: trace.points.length < 60 ? "lines+markers" : "lines",
    name: trace.name,
    x: trace.points.map((p) => p[0]),
    y: trace.points.map((p) => p[1]),
  }));
  const layout = {
    ...LAYOUT,
    title: { text: title, x: 0.02 },
    xaxis: { title: { text: xTitle } },
    showlegend: traces.length > 1 || traces[0]?.name !== title,
    ...extra,
  };
  return window.Plotly.react(node, data, layout, CONFIG);
}

// At most `max` points, evenly spaced, the first and the last always kept: exactly as the
// API thins (service.runs.service.thin, whose round() rounds halves to even).
export function thin(points, max) {
  if (points.length <= max) return points;
  const last = points.length - 1;
  return Array.from({ length: max }, (_, i) => points[roundHalfEven((i * last) / (max - 1))]);
}

function roundHalfEven(x) {
  const nearest = Math.round(x);
  return x % 1 === 0.5 && nearest % 2 === 1 ? nearest - 1 : nearest;
}

// [[step, v]] -> [[samples, v]]: every step trains prompts_per_step x samples_per_prompt samples.
export function againstSamples(points, config) {
  const perStep = (config.prompts_per_step ?? 1) * (config.samples_per_prompt ?? 1);
  return points.map(([step, value]) => [step * perStep, value]);
}

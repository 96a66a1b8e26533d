// One trajectory: prompt, response, feedback, teacher context, and the response tokens
// coloured by the teacher-student log-ratio. In a tool episode, tokens without a ratio
// are the environment's (tool output): shown apart, marked as not trained on.
import { get } from "./api.js";
import { h, main, number, when } from "./dom.js";

const SCALE = 2; // |log-ratio| at which a token is fully coloured

export async function render(parts) {
  const [runId, id] = [Number(parts[1]), Number(parts[3])];
  const t = await get(`/v1/runs/${runId}/trajectories/${id}`);
  const { per_turn: turns, ...counts } = t.metrics ?? {};
  main(
    h(
      "h1",
      {},
      h("a", { href: `/runs/${runId}` }, `Run #${runId}`),
      " · ",
      h("a", { href: `/runs/${runId}/trajectories?step=${t.step}` }, `step ${t.step}`),
      ` · trajectory ${t.id}`,
    ),
    h(
      "table",
      { class: "facts" },
      [
        ["task", t.task_id],
        ["place in step", `task ${t.group_index}, sample ${t.sample_index}`],
        ["verdict", t.verdict],
        ["reward", number(t.reward)],
        ["truncated", t.truncated ? "yes" : "no"],
        ["sampled by policy version", t.policy_version],
        ["recorded", when(t.created_at)],
        ...Object.entries(counts).map(([k, v]) => [k, JSON.stringify(v)]),
      ].map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))),
    ),
    section("Prompt", "prompt", t.prompt),
    section("Response", "response", t.response),
    section("Environment feedback", "feedback", t.feedback ?? "(none)"),
    section(
      "Teacher context",
      "teacher-context",
      t.teacher_context ?? "(none: no teacher signal for this sample)",
    ),
    h("h2", {}, "Tokens by teacher-student log-ratio"),
    tokens(t.token_scores),
    turns?.length ? turnTable(turns) : null,
  );
}

function section(title, id, text) {
  return [h("h2", {}, title), h("pre", { class: "text", id }, text)];
}

function tokens(scores) {
  if (!scores)
    return h("p", { class: "muted", id: "tokens" }, "Not trained yet: the step has no token scores.");
  const legend = h(
    "p",
    { class: "legend" },
    h("span", { class: "token", style: colour(-SCALE) }, "teacher less likely"),
    " ",
    h("span", { class: "token", style: colour(0) }, "agree"),
    " ",
    h("span", { class: "token", style: colour(SCALE) }, "teacher more likely"),
    " ",
    h("span", { class: "token untrained" }, "tool output, not trained on"),
  );
  // Runs of trained tokens (model turns) and of untrained ones (tool output).
  const segments = [];
  for (const score of scores) {
    const trained = score.log_ratio !== null;
    if (!segments.length || segments[segments.length - 1].trained !== trained)
      segments.push({ trained, items: [] });
    segments[segments.length - 1].items.push(score);
  }
  let turn = 0;
  const blocks = segments.map((segment) => {
    const label = segment.trained ? `model turn ${++turn}` : "tool output · not trained on";
    return h(
      "div",
      { class: `segment ${segment.trained ? "trained" : "untrained"}` },
      segments.length > 1 ? h("div", { class: "segment-label" }, label) : null,
      segment.items.map((s) =>
        segment.trained
          ? h(
              "span",
              {
                class: "token",
                style: colour(s.log_ratio),
                title: `log-ratio ${s.log_ratio.toFixed(3)}`,
                dataset: { logRatio: s.log_ratio },
              },
              show(s.token),
            )
          : h(
              "span",
              { class: "token untrained", title: "environment token: not trained on" },
              show(s.token),
            ),
      ),
    );
  });
  return h("div", { id: "tokens" }, legend, blocks);
}

function show(token) {
  return token === null ? "·" : token.replaceAll("\n", "↵\n");
}

// Red where the teacher puts less probability on the token than the student, blue where more.
function colour(ratio) {
  const strength = Math.min(Math.abs(ratio) / SCALE, 1);
  const hue = ratio < 0 ? "220, 38, 38" : "37, 99, 235";
  return `background: rgba(${hue}, ${(0.08 + 0.72 * strength).toFixed(2)})`;
}

function turnTable(turns) {
  const keys = [...new Set(turns.flatMap((t) => Object.keys(t)))];
  return [
    h("h2", {}, "Turns"),
    h(
      "table",
      { id: "turns" },
      h(
        "tr",
        {},
        h("th", {}, "turn"),
        keys.map((k) => h("th", {}, k)),
      ),
      turns.map((t, i) =>
        h(
          "tr",
          {},
          h("td", {}, i + 1),
          keys.map((k) => h("td", {}, t[k] === undefined ? "" : JSON.stringify(t[k]))),
        ),
      ),
    ),
  ];
}

// One run: its state and controls, live curves over steps or samples, its config and
// checkpoints. Curves come thinned from the API (`points`), then grow with the run's
// events (SSE), which the page follows while the run is live.
import { download, get, post, stream } from "./api.js";
import { againstSamples, draw, panelsFor, thin } from "./charts.js";
import { errorBox, h, main, number, pre, status, when } from "./dom.js";

const POINTS = 1000; // per metric, from the API and kept on the page
const TERMINAL = new Set(["completed", "failed", "cancelled", "stopped"]);
const STEPS_PER_S_WINDOW = 10; // as the API's `steps_per_s`
const ACTIONS = {
  stop: ["queued", "running"],
  resume: ["stopped", "failed"],
  cancel: ["queued", "running", "stopped", "failed"],
};

export async function render(parts, query) {
  const id = Number(parts[1]);
  const page = new RunPage(id, query.get("x") === "samples" ? "samples" : "steps");
  await page.start();
}

class RunPage {
  constructor(id, x) {
    this.id = id;
    this.x = x;
    this.series = {};
    this.stepTimes = []; // [step, ms] of live step events, for steps_per_s
    this.following = null; // AbortController of the live stream
    this.redrawTimer = null;
  }

  async start() {
    // Leaving the page closes the stream (a page kept for "back" would hold it open).
    addEventListener("pagehide", () => this.following?.abort());
    this.run = await get(`/v1/runs/${this.id}`);
    this.layout();
    this.showRun();
    if (!TERMINAL.has(this.run.status)) await this.follow();
    const metrics = await get(`/v1/runs/${this.id}/metrics`, { points: POINTS });
    for (const [name, points] of Object.entries(metrics.series)) {
      const live = this.series[name] ?? []; // events that came while the curves loaded
      const last = points.length ? points[points.length - 1][0] : -1;
      this.series[name] = [...points, ...live.filter(([step]) => step > last)];
    }
    this.drawCharts();
    await this.showCheckpoints();
  }

  layout() {
    const xPicker = h(
      "span",
      { class: "toggle" },
      "x axis: ",
      ["steps", "samples"].map((x) =>
        h("a", { href: `?x=${x}`, class: x === this.x ? "active" : "", id: `x-${x}` }, x),
      ),
    );
    main(
      h("h1", {}, `Run #${this.id} `, h("span", { id: "run-status" })),
      h("p", { class: "toolbar", id: "controls" }),
      h("div", { id: "run-error" }),
      h("table", { class: "facts", id: "run-facts" }),
      h("h2", {}, "Curves ", h("small", { id: "live", class: "muted" })),
      h("p", {}, xPicker),
      h("div", { class: "charts", id: "charts" }, h("p", { class: "muted" }, "Loading curves…")),
      h("h2", {}, "Recent events"),
      h("ol", { id: "events", class: "events", reversed: true }),
      h("h2", {}, "Checkpoints"),
      h("div", { id: "checkpoints" }),
      h("details", {}, h("summary", {}, "Configuration"), pre(this.run.config)),
    );
  }

  showRun() {
    const run = this.run;
    document.getElementById("run-status").replaceChildren(status(run.status));
    const buttons = Object.entries(ACTIONS).map(([action, from]) =>
      h(
        "button",
        {
          type: "button",
          id: `action-${action}`,
          disabled: !from.includes(run.status),
          onclick: () => this.act(action),
        },
        action,
      ),
    );
    document
      .getElementById("controls")
      .replaceChildren(
        ...buttons,
        " ",
        h("a", { href: `/runs/${this.id}/trajectories` }, "Trajectories"),
        " · ",
        h("a", { href: `/compare?runs=${this.id}` }, "Compare"),
      );
    const facts = [
      [
        "environment",
        h("a", { href: `/environments/${encodeURIComponent(run.environment)}` }, run.environment),
      ],
      ["model", run.model],
      ["algorithm", run.algorithm],
      ["progress", h("span", { id: "progress" }, `${run.steps_done} / ${run.steps} steps`)],
      ["samples seen", h("span", { id: "samples-seen" }, number(run.samples_seen))],
      ["policy version", h("span", { id: "policy-version" }, run.policy_version)],
      [
        "held-out accuracy",
        `${number(run.eval.base)} at step 0 → ${number(run.eval.latest)} at step ${run.eval.latest_step ?? "–"}`,
      ],
      ["created", when(run.created_at)],
      ["updated", when(run.updated_at)],
    ];
    document
      .getElementById("run-facts")
      .replaceChildren(...facts.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))));
    document
      .getElementById("run-error")
      .replaceChildren(run.error ? h("div", { class: "error" }, run.error) : "");
  }

  async act(action) {
    try {
      this.run = await post(`/v1/runs/${this.id}/${action}`);
      this.showRun();
      this.following?.abort(); // the stream of the state before ends: follow the new one
      this.following = null;
      if (!TERMINAL.has(this.run.status)) await this.follow();
    } catch (error) {
      document.getElementById("run-error").replaceChildren(errorBox(error));
    }
  }

  // Follow the run's events from now on; resolves once the stream is open and the run
  // read again.
  async follow() {
    if (this.following) return;
    const following = (this.following = new AbortController());
    const live = document.getElementById("live");
    let opened;
    const open = new Promise((resolve) => {
      opened = resolve;
    });
    const done = stream(
      `/v1/runs/${this.id}/events?tail=true`,
      (m) => this.onEvent(m),
      following.signal,
      () => {
        live.textContent = "● live";
        opened();
      },
    )
      .catch((error) => document.getElementById("run-error").replaceChildren(errorBox(error)))
      .finally(() => {
        if (this.following !== following) return; // a newer stream took over
        live.textContent = "";
        this.following = null;
      });
    await Promise.race([open, done]);
    await this.refreshRun(); // what changed before the stream opened
  }

  onEvent(message) {
    const event = JSON.parse(message.data);
    const payload = event.payload;
    const list = document.getElementById("events");
    list.prepend(h("li", {}, h("code", {}, event.kind), " ", describe(event)));
    while (list.children.length > 20) list.lastChild.remove();
    if (event.kind === "step") {
      for (const [name, value] of Object.entries(payload.metrics ?? {}))
        this.append(name, payload.step, value);
      this.appendRate(payload.step, Date.parse(event.created_at));
      this.run.steps_done = Math.max(this.run.steps_done, payload.step);
      document.getElementById("progress").textContent = `${this.run.steps_done} / ${this.run.steps} steps`;
      document.getElementById("policy-version").textContent = this.run.steps_done; // a step is a version
      if (payload.metrics?.samples_seen)
        document.getElementById("samples-seen").textContent = number(payload.metrics.samples_seen);
      this.scheduleRedraw();
    } else if (event.kind === "eval") {
      this.append("eval_accuracy", payload.step, payload.accuracy);
      this.scheduleRedraw();
      this.showCheckpoints();
    } else if (event.kind !== "batch") {
      this.refreshRun(); // a change of state
    }
  }

  append(name, step, value) {
    if (typeof value !== "number") return;
    const points = (this.series[name] ??= []);
    if (points.length && points[points.length - 1][0] >= step) return; // already loaded
    points.push([step, value]);
    if (points.length > 2 * POINTS) this.series[name] = thin(points, POINTS);
  }

  appendRate(step, at) {
    this.stepTimes.push([step, at]);
    if (this.stepTimes.length > STEPS_PER_S_WINDOW + 1) this.stepTimes.shift();
    const [first, last] = [this.stepTimes[0], this.stepTimes[this.stepTimes.length - 1]];
    if (this.stepTimes.length > 1 && last[1] > first[1]) {
      this.append("steps_per_s", step, ((this.stepTimes.length - 1) * 1000) / (last[1] - first[1]));
    }
  }

  showError(error) {
    document.getElementById("run-error").replaceChildren(errorBox(error));
  }

  async refreshRun() {
    this.run = await get(`/v1/runs/${this.id}`);
    this.showRun();
  }

  scheduleRedraw() {
    this.redrawTimer ??= setTimeout(() => {
      this.redrawTimer = null;
      this.drawCharts();
    }, 500);
  }

  drawCharts() {
    const holder = document.getElementById("charts");
    const panels = panelsFor(Object.keys(this.series));
    if (!panels.length) {
      holder.replaceChildren(h("p", { class: "muted" }, "No step trained yet."));
      return;
    }
    const xTitle = this.x === "samples" ? "samples" : "step";
    for (const panel of panels) {
      const key = `chart-${panel.title.replace(/[^a-z0-9]+/gi, "-").toLowerCase()}`;
      let node = document.getElementById(key);
      if (!node) {
        holder.querySelector("p.muted")?.remove();
        node = h("div", { class: "chart", id: key, dataset: { metrics: panel.metrics.join(" ") } });
        holder.append(node);
      }
      const traces = panel.metrics.map((name) => ({
        name,
        points: this.x === "samples" ? againstSamples(this.series[name], this.run.config) : this.series[name],
      }));
      draw(node, panel.title, traces, xTitle);
    }
  }

  async showCheckpoints() {
    const { items } = await get(`/v1/runs/${this.id}/checkpoints`);
    const headings = ["step", "held-out accuracy", "", "path", "kept", ""];
    const rows = items.map((c) => {
      const archive = `/v1/runs/${this.id}/checkpoints/${c.step}/archive`;
      const name = `opsd-run-${this.id}-step-${c.step}.tar`;
      return h(
        "tr",
        { class: c.best ? "best" : "" },
        h("td", {}, c.step),
        h("td", {}, number(c.eval_accuracy)),
        h("td", {}, c.best ? "★ best" : ""),
        h("td", {}, h("code", {}, c.path)),
        h("td", {}, when(c.created_at)),
        h(
          "td",
          {},
          h(
            "button",
            { type: "button", onclick: () => download(archive, name).catch((e) => this.showError(e)) },
            "download",
          ),
        ),
      );
    });
    document.getElementById("checkpoints").replaceChildren(
      items.length
        ? h(
            "table",
            { id: "checkpoint-list" },
            h(
              "tr",
              {},
              headings.map((c) => h("th", {}, c)),
            ),
            rows,
          )
        : h("p", { class: "muted" }, "No checkpoint yet."),
    );
  }
}

function describe(event) {
  const p = event.payload;
  if (event.kind === "step")
    return `step ${p.step}: reward ${number(p.metrics?.reward_mean)}, loss ${number(p.metrics?.loss)}`;
  if (event.kind === "eval") return `step ${p.step}: held-out accuracy ${number(p.accuracy)}`;
  if (event.kind === "batch") return `step ${p.step} sampled`;
  return p.error ?? p.status ?? "";
}

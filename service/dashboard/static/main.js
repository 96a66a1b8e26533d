// Picks the view the server named in <body data-page> and renders it from the URL.
import { token } from "./api.js";
import { errorBox, main } from "./dom.js";

const VIEWS = {
  runs: () => import("./runs.js"),
  "new-run": () => import("./new_run.js"),
  run: () => import("./run.js"),
  trajectories: () => import("./trajectories.js"),
  trajectory: () => import("./trajectory.js"),
  compare: () => import("./compare.js"),
  environments: () => import("./environments.js"),
  environment: () => import("./environment.js"),
  token: () => import("./token.js"),
};

// The path's parts: /runs/3/trajectories/9 -> ["runs", "3", "trajectories", "9"].
const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
const query = new URLSearchParams(location.search);

// A page restored from the back-forward cache has lost its live streams: read it anew.
addEventListener("pageshow", (event) => event.persisted && location.reload());
document.getElementById("token-state").textContent = token() ? "token set" : "no token";
const view = await VIEWS[document.body.dataset.page]();
try {
  await view.render(parts, query);
} catch (error) {
  main(errorBox(error));
  console.error(error);
}
document.body.dataset.ready = "true"; // for the browser tests: the first render is done

// The API token: kept in this browser (localStorage) and sent with every API call.
// Reading needs none from this machine when the server has none; with one, the server
// wants a token for everything (a read token is enough to read).
import { get, setToken, token } from "./api.js";
import { h, main } from "./dom.js";

export async function render() {
  const input = h("input", {
    type: "password",
    id: "token-input",
    autocomplete: "off",
    value: token(),
    size: 48,
  });
  const state = h("p", { id: "token-check" });
  const check = async () => {
    try {
      await get("/v1/runs", { limit: 1 });
      state.textContent = token()
        ? "The server accepts this token for reading."
        : "This server answers reads without a token.";
      state.className = "ok";
    } catch (error) {
      state.textContent = `${error.status} ${error.code}: ${error.message}`;
      state.className = "error";
    }
    document.getElementById("token-state").textContent = token() ? "token set" : "no token";
  };
  const form = h(
    "form",
    { id: "token-form" },
    h("label", {}, "API token ", input),
    " ",
    h("button", { type: "submit", id: "token-save" }, "Save"),
    " ",
    h(
      "button",
      {
        type: "button",
        id: "token-clear",
        onclick: () => {
          setToken("");
          input.value = "";
          check();
        },
      },
      "Forget",
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    check();
  });
  main(
    h("h1", {}, "API token"),
    h(
      "p",
      {},
      "With OPSD_API_TOKEN set on the server, every call needs a token: the API token " +
        "for everything, or OPSD_READ_TOKEN to read only. It stays in this browser and is sent " +
        "only to this server, never put in a link.",
    ),
    form,
    state,
  );
  await check();
}

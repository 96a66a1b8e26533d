// The REST API as the dashboard uses it: JSON reads and changes with the user's token,
// and a run's events as a stream (fetch, not EventSource: EventSource cannot send a token).

const TOKEN_KEY = "opsd-token";

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function headers(extra = {}) {
  const given = token();
  return given ? { ...extra, Authorization: `Bearer ${given}` } : extra;
}

async function answer(response) {
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (response.ok) return body;
  const error = body?.error ?? {};
  throw new ApiError(
    response.status,
    error.code ?? "http_" + response.status,
    error.message ?? response.statusText,
    error.details,
  );
}

export async function get(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const url = query.size ? `${path}?${query}` : path;
  return answer(await fetch(url, { headers: headers() }));
}

export async function post(path, body = undefined) {
  const init = { method: "POST", headers: headers({ "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  return answer(await fetch(path, init));
}

// Save what `path` answers as a file (with the token: a plain link could not send it).
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) return answer(response);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = filename;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

// Calls onEvent({id, event, data}) for every server-sent event of `path` until the stream
// ends or `signal` aborts; reconnects with Last-Event-ID when the connection drops.
// onOpen() runs once the server has answered (it has fixed where the stream starts).
export async function stream(path, onEvent, signal, onOpen = () => {}) {
  let lastId = null;
  while (!signal.aborted) {
    const extra = lastId === null ? {} : { "Last-Event-ID": lastId };
    let response;
    try {
      response = await fetch(path, { headers: headers(extra), signal });
    } catch {
      if (signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, 2000));
      continue;
    }
    if (!response.ok) return answer(response);
    onOpen();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return; // the run ended: the server closed the stream
        buffer += value.replaceAll("\r\n", "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (message.data === undefined) continue; // a ping
          lastId = message.id ?? lastId;
          onEvent(message);
        }
      }
    } catch {
      if (signal.aborted) return;
    }
  }
}

function parseEvent(block) {
  const fields = {};
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const name = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    fields[name] = name === "data" && fields.data !== undefined ? `${fields.data}\n${value}` : value;
  }
  return fields;
}

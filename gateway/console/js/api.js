// The REST API on the same origin. A failed call throws ApiError carrying the API's own message
// ({"code", "message"} from the gateway), which pages show as it is.

export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.path = path;
  }

  /** The gateway wants a (valid) bearer token: AUTH_MODE=jwt. */
  get unauthenticated() {
    return this.status === 401;
  }

  /** The endpoint exists in the contract but is not built yet (HTTP 501 / gRPC UNIMPLEMENTED). */
  get unimplemented() {
    return this.status === 501;
  }
}

function withParams(path, params) {
  if (!params) return path;
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) query.append(key, String(item));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// With AUTH_MODE=jwt the gateway wants a bearer token. The console keeps the one the user pasted
// (from `make token` or their identity provider) for this tab only: sessionStorage, never a cookie.
const TOKEN_KEY = "platformq-token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value.trim()),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export async function request(method, path, { params, body, signal } = {}) {
  const url = withParams(path, params);
  const headers = body === undefined ? {} : { "content-type": "application/json" };
  if (token.get()) headers.authorization = `Bearer ${token.get()}`;
  let reply;
  try {
    reply = await fetch(url, {
      method,
      signal,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `the gateway did not answer (${error.message})`, url);
  }
  const text = await reply.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = null;
  }
  if (!reply.ok) {
    const message = data && typeof data.message === "string" && data.message ? data.message : text || reply.statusText;
    throw new ApiError(reply.status, message, url);
  }
  if (data === null) throw new ApiError(reply.status, "the answer was not JSON", url);
  return data;
}

export const get = (path, params, options = {}) => request("GET", path, { ...options, params });
export const post = (path, body, options = {}) => request("POST", path, { ...options, body });
export const put = (path, body, options = {}) => request("PUT", path, { ...options, body });
export const del = (path, options = {}) => request("DELETE", path, options);

/** Proto JSON prints 64-bit integers as strings: timestamps come back as "1796017620000". */
export const ms = (value) => (value === undefined || value === null || value === "" ? null : Number(value));

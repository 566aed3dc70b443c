// The console's shell: hash routes (#/page/arg?k=v), one page at a time, its streams and requests
// ended when the page is left, and the header's live-connection state.

import { ApiError, token } from "./api.js";
import { h, replace } from "./dom.js";
import { StreamRegistry } from "./live.js";

const PAGES = {
  overview: () => import("./pages/overview.js"),
  service: () => import("./pages/service.js"),
  dashboards: () => import("./pages/dashboards.js"),
  anomalies: () => import("./pages/anomalies.js"),
  forecast: () => import("./pages/forecast.js"),
  query: () => import("./pages/query.js"),
};
const DEFAULT_PAGE = "overview";

export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, "");
  const [path, queryText = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || DEFAULT_PAGE, args: parts.slice(1), query: new URLSearchParams(queryText) };
}

/** Change the hash's query (page state such as filters) without re-rendering the page. */
export function setQuery(query) {
  const { name, args } = parseHash();
  const text = new URLSearchParams(query).toString();
  const hash = `#/${[name, ...args].map(encodeURIComponent).join("/")}${text ? `?${text}` : ""}`;
  history.replaceState(null, "", hash);
}

/** A failed request's message from the API, or the page's own message for other errors. */
/** Where to paste a bearer token when the gateway answers 401 (AUTH_MODE=jwt). */
function signIn(error) {
  const slot = document.getElementById("auth-slot");
  if (slot.firstChild) return;
  const input = h("input#token", { type: "password", autocomplete: "off", required: true, size: 40 });
  const form = h(
    "form.card.sign-in",
    {
      "aria-label": "Sign in",
      onsubmit: (event) => {
        event.preventDefault();
        token.set(input.value);
        slot.replaceChildren();
        window.dispatchEvent(new HashChangeEvent("hashchange"));
      },
    },
    h("h2", "Sign in"),
    h("p", `The gateway wants a bearer token: ${error.message}`),
    h("div.field", h("label", { for: "token" }, "Bearer token (from `make token` or your identity provider)"), input),
    h("p", h("button.primary", { type: "submit" }, "Use this token"), " ", token.get() ? h("button", { type: "button", onclick: () => { token.clear(); input.value = ""; } }, "Forget the current one") : null),
    h("small.muted", "Kept for this browser tab only (sessionStorage)."),
  );
  slot.append(form);
  input.focus();
}

export function errorBox(error, what = "") {
  if (error instanceof ApiError && error.unauthenticated) {
    signIn(error);
    return h("div.notice", { role: "status" }, `${what ? `${what}: ` : ""}not signed in (HTTP 401: ${error.message}); sign in above`);
  }
  if (error instanceof ApiError && error.unimplemented) {
    return h("div.notice", { role: "status" }, `${what ? `${what}: ` : ""}not built yet (the API answers 501: ${error.message})`);
  }
  const status = error instanceof ApiError && error.status ? ` (HTTP ${error.status})` : "";
  return h("div.error", { role: "alert" }, `${what ? `${what}: ` : ""}${error.message}${status}`);
}

/** The page on screen: its requests' controller, its cleanups and its streams. */
class Shell {
  constructor() {
    this.main = document.getElementById("main");
    this.nav = document.getElementById("nav");
    this.menu = document.querySelector(".menu-toggle");
    const conn = document.getElementById("conn");
    this.streams = new StreamRegistry(({ state, text }) => {
      conn.dataset.state = state;
      conn.textContent = text;
    });
    this.current = null; // {controller, disposers}
    this.menu.addEventListener("click", () => {
      const open = this.nav.classList.toggle("open");
      this.menu.setAttribute("aria-expanded", String(open));
    });
    window.addEventListener("hashchange", (event) => this.route(event));
  }

  leave() {
    if (!this.current) return;
    this.current.controller.abort();
    for (const dispose of this.current.disposers) {
      try {
        dispose();
      } catch (error) {
        console.warn("dispose failed", error);
      }
    }
    this.streams.closeAll();
    this.current = null;
  }

  markNav(name) {
    for (const link of this.nav.querySelectorAll("a")) {
      if (link.dataset.page === name || (name === "service" && link.dataset.page === "overview")) {
        link.setAttribute("aria-current", "page");
      } else {
        link.removeAttribute("aria-current");
      }
    }
    this.nav.classList.remove("open");
    this.menu.setAttribute("aria-expanded", "false");
  }

  async route(event) {
    this.leave();
    const { main } = this;
    const { name, args, query } = parseHash();
    const controller = new AbortController();
    const disposers = [];
    this.current = { controller, disposers };
    this.markNav(name);
    const load = PAGES[name];
    if (!load) {
      replace(main, h("h1", "Not found"), h("p", `No page called “${name}”. `, h("a", { href: "#/overview" }, "Overview")));
      return;
    }
    replace(main, h("p.muted", "Loading…"));
    const ctx = {
      root: main,
      args,
      query,
      signal: controller.signal,
      streams: this.streams,
      onDispose: (fn) => disposers.push(fn),
      setQuery,
      errorBox,
    };
    try {
      const module = await load();
      if (controller.signal.aborted) return;
      document.title = `${module.title || name} · platformQ analytics`;
      await module.render(ctx);
    } catch (error) {
      if (error.name === "AbortError" || controller.signal.aborted) return;
      console.warn(error);
      replace(main, errorBox(error));
    }
    // After a navigation (not on the first load) keyboard focus moves to the new page's content.
    if (event && !controller.signal.aborted && document.activeElement === document.body) main.focus({ preventScroll: true });
  }
}

if (!location.hash) history.replaceState(null, "", `#/${DEFAULT_PAGE}`);
new Shell().route(null);

// Placeholder while the page is being built: it says so instead of showing invented data.
import { h, replace } from "../dom.js";

export const title = "service";

export async function render({ root }) {
  replace(root, h("h1", "service"), h("p.notice", "This page is not built yet."));
}

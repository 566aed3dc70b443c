// Dashboards (docs/dashboards.md): the list (#/dashboards), one dashboard live
// (#/dashboards/<id>), and the form that creates (#/dashboards/new, ?from=<id> to start from a
// copy) or edits one (#/dashboards/<id>/edit). Each part lives in ./dashboards/.

export const title = "Dashboards";

export async function render(ctx) {
  const [first, second] = ctx.args;
  if (!first) return (await import("./dashboards/list.js")).renderList(ctx);
  if (first === "new") return (await import("./dashboards/form.js")).renderForm(ctx, null);
  if (second === "edit") return (await import("./dashboards/form.js")).renderForm(ctx, first);
  return (await import("./dashboards/view.js")).renderView(ctx, first);
}

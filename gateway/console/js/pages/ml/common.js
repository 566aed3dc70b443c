// Helpers of the anomaly explorer and the forecast view (candidates for the shared modules).

/** "k=v, k2=v2" → [["k", "v"], ["k2", "v2"]]; an entry without "=" is kept whole so the API can
 * name it in its error (the UI does not drop what the user typed). */
export function parseLabelText(text) {
  return String(text || "")
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => {
      const at = part.indexOf("=");
      return at < 0 ? [part, null] : [part.slice(0, at).trim(), part.slice(at + 1).trim()];
    });
}

/** A label map as people read it: "host=h1, region=eu" (or "–" when it has none). */
export function labelText(labels) {
  const entries = Object.entries(labels || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "–";
}

/** Whether two label maps are the same set of pairs. */
export function sameLabels(a, b) {
  const ea = Object.entries(a || {});
  const eb = b || {};
  return ea.length === Object.keys(eb).length && ea.every(([k, v]) => eb[k] === v);
}

/** Label filters of POST /api/v1/query ("=" on every pair). */
export function equalityFilters(labels) {
  return Object.entries(labels || {}).map(([label, value]) => ({ label, op: "=", value }));
}

/** RFC 3339 of epoch ms (the API's start/end). */
export const rfc3339 = (msValue) => new Date(msValue).toISOString();

/** A duration in ms as the API writes durations ("90s", "5m", "2h"). */
export function durationText(msValue) {
  const s = Math.round(msValue / 1000);
  if (s % 86400 === 0) return `${s / 86400}d`;
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

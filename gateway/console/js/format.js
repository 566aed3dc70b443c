// Numbers and times as people read them: times in the viewer's own zone.

import { h } from "./dom.js";

const compact = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 4 });
const dateTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

export function number(value) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 0.001 || abs >= 1e9)) return value.toExponential(2);
  return compact.format(value);
}

export function percent(fraction) {
  return fraction === undefined || fraction === null ? "–" : `${compact.format(fraction * 100)}%`;
}

export function time(msValue) {
  if (msValue === null || msValue === undefined || msValue === "" || Number(msValue) === 0) return "–";
  return dateTime.format(new Date(Number(msValue)));
}

export function ago(msValue, now = Date.now()) {
  if (!msValue || Number(msValue) === 0) return "never";
  const seconds = Math.round((now - Number(msValue)) / 1000);
  if (seconds < 0) return `in ${duration(-seconds * 1000)}`;
  return `${duration(seconds * 1000)} ago`;
}

export function duration(msValue) {
  const seconds = Math.round(Number(msValue) / 1000);
  if (seconds < 90) return `${seconds} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) return `${minutes} min`;
  const hours = Math.round(minutes / 6) / 10;
  if (hours < 48) return `${hours} h`;
  return `${Math.round(hours / 2.4) / 10} d`;
}

/** The time zone the charts and times are shown in. */
export const zone = () => Intl.DateTimeFormat().resolvedOptions().timeZone;

/** A coloured status word (healthy, degraded, down, firing, pending, ...). */
export function badge(status) {
  const text = status || "unknown";
  return h("span.badge", { dataset: { status: text } }, text);
}

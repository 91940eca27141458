// Times as Pyroscope's URLs write them: `now`, `now-1h`, or absolute (unix seconds or ms).
const UNITS: Record<string, number> = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3, y: 365 * 86400e3 };

/// Milliseconds since the epoch, or null when the text is not a time.
export function parseTime(text: string, now: number): number | null {
  const s = text.trim().replace(/\s+/g, '');
  if (s === '' || s === 'now') return now;
  const rel = /^now-(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$/.exec(s);
  if (rel) return now - Number(rel[1]) * (rel[2] === 'ms' ? 1 : UNITS[rel[2]]);
  if (/^\d+$/.test(s)) {
    const n = Number(s);
    // seconds, milliseconds, microseconds or nanoseconds, by magnitude (as Pyroscope reads them)
    if (s.length <= 10) return n * 1e3;
    if (s.length <= 13) return n;
    if (s.length <= 16) return Math.floor(n / 1e3);
    return Math.floor(n / 1e6);
  }
  const t = Date.parse(text);
  return Number.isNaN(t) ? null : t;
}

export interface Resolved {
  start: number;
  end: number;
}

export function resolve(from: string, until: string, now: number): Resolved | string {
  const start = parseTime(from, now);
  const end = parseTime(until, now);
  if (start === null) return `"${from}" is not a time (try now-1h, or unix seconds)`;
  if (end === null) return `"${until}" is not a time (try now, or unix seconds)`;
  if (start >= end) return `the range starts (${fmtTime(start)}) at or after it ends (${fmtTime(end)})`;
  return { start, end };
}

const pad = (n: number) => String(n).padStart(2, '0');
export function fmtTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/// A time for the URL: relative text kept as written, absolute ones as unix seconds.
export const urlTime = (ms: number) => String(Math.round(ms / 1000));

export function describe(from: string, until: string, r: Resolved): string {
  if (/^now-/.test(from) && (until === 'now' || until === '')) return 'the last ' + from.slice(4);
  return `${fmtTime(r.start)} – ${fmtTime(r.end)}`;
}

export const PRESETS: [string, string][] = [
  ['now-5m', 'Last 5 minutes'],
  ['now-15m', 'Last 15 minutes'],
  ['now-1h', 'Last hour'],
  ['now-6h', 'Last 6 hours'],
  ['now-24h', 'Last 24 hours'],
  ['now-7d', 'Last 7 days'],
  ['now-30d', 'Last 30 days'],
];

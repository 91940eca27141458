// Values in their profile type's unit.
import type { ProfileType } from './api';

export type Unit = 'nanoseconds' | 'bytes' | 'count' | string;

const scale = (v: number, steps: [number, string][], digits = 2): string => {
  let [d, u] = steps[0];
  for (const s of steps) if (Math.abs(v) >= s[0]) [d, u] = s;
  const x = v / d;
  return (Number.isInteger(x) ? String(x) : x.toFixed(Math.abs(x) >= 100 ? 0 : digits).replace(/\.?0+$/, '')) + (u ? ' ' + u : '');
};

export function fmtValue(v: number, unit: Unit): string {
  switch (unit) {
    case 'nanoseconds':
      return scale(v, [[1, 'ns'], [1e3, 'µs'], [1e6, 'ms'], [1e9, 's'], [60e9, 'min'], [3600e9, 'h']]);
    case 'microseconds':
      return fmtValue(v * 1e3, 'nanoseconds');
    case 'milliseconds':
      return fmtValue(v * 1e6, 'nanoseconds');
    case 'seconds':
      return fmtValue(v * 1e9, 'nanoseconds');
    case 'bytes':
      return scale(v, [[1, 'B'], [1024, 'KiB'], [1024 ** 2, 'MiB'], [1024 ** 3, 'GiB'], [1024 ** 4, 'TiB']]);
    default:
      return scale(v, [[1, ''], [1e3, 'k'], [1e6, 'M'], [1e9, 'G']]);
  }
}

export const pct = (part: number, whole: number) => (whole > 0 ? ((100 * part) / whole).toFixed(2).replace(/\.?0+$/, '') : '0') + '%';

/// A profile type as a person reads it: `process_cpu · cpu (nanoseconds)`.
export function typeLabel(id: string, types: ProfileType[]): string {
  const t = types.find((x) => x.ID === id);
  if (!t) return id;
  return `${t.name} · ${t.sampleType}`;
}

export const unitOf = (id: string) => id.split(':')[2] || 'count';

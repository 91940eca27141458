// `<profile type>{<selector>}`: Pyroscope's query, parsed into matchers and written back.
export type Op = '=' | '!=' | '=~' | '!~';
export interface Matcher {
  name: string;
  op: Op;
  value: string;
}
export interface Query {
  profileType: string;
  matchers: Matcher[];
}

export const SERVICE = 'service_name';

export function parseQuery(q: string): Query {
  const i = q.indexOf('{');
  if (i < 0) return { profileType: q.trim(), matchers: [] };
  return { profileType: q.slice(0, i).trim(), matchers: parseSelector(q.slice(i)) };
}

export function parseSelector(sel: string): Matcher[] {
  const out: Matcher[] = [];
  const re = /([a-zA-Z_][a-zA-Z0-9_.]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(sel))) out.push({ name: m[1], op: m[2] as Op, value: m[3].replace(/\\(.)/g, '$1') });
  return out;
}

const quote = (s: string) => '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
export const selector = (ms: Matcher[]) => '{' + ms.map((m) => m.name + m.op + quote(m.value)).join(',') + '}';
export const formatQuery = (q: Query) => q.profileType + selector(q.matchers);
export const service = (q: Query) => q.matchers.find((m) => m.name === SERVICE && m.op === '=')?.value ?? '';

export function withMatcher(q: Query, m: Matcher): Query {
  return { ...q, matchers: [...q.matchers.filter((x) => !(x.name === m.name && x.op === m.op)), m] };
}
export function without(q: Query, i: number): Query {
  return { ...q, matchers: q.matchers.filter((_, j) => j !== i) };
}

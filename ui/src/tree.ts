// A flame graph decoded from Pyroscope's flamebearer levels into flat typed arrays: nodes in
// level order, left to right within a level, each with its parent. Children of a node lie
// next to each other in the level below, so subtrees are ranges and every walk is O(nodes).
import type { FlameGraphJSON } from './api';

export interface Diff {
  lw: Float64Array;
  ls: Float64Array;
  rw: Float64Array;
  rs: Float64Array;
  lt: number;
  rt: number;
}

export interface Flame {
  names: string[];
  x: Float64Array;
  w: Float64Array;
  self: Float64Array;
  name: Int32Array;
  parent: Int32Array;
  /// levels[l] is the first node of level l; levels[depth] the node count.
  levels: Int32Array;
  total: number;
  diff?: Diff;
}

export const depth = (f: Flame) => f.levels.length - 1;
export const size = (f: Flame) => f.name.length;

export function levelOf(f: Flame, i: number): number {
  let lo = 0;
  let hi = depth(f) - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (f.levels[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/// Decodes `levels` of quadruples (x delta, total, self, name) or, for a diff, 7-tuples
/// (left x delta, total, self, right x delta, total, self, name).
export function decode(fg: FlameGraphJSON, isDiff: boolean): Flame {
  const names = fg.names || [];
  const lv = fg.levels || [];
  const k = isDiff ? 7 : 4;
  let n = 0;
  for (const l of lv) n += Math.floor((l.values || []).length / k);
  const x = new Float64Array(n);
  const w = new Float64Array(n);
  const self = new Float64Array(n);
  const name = new Int32Array(n);
  const parent = new Int32Array(n);
  const levels = new Int32Array(lv.length + 1);
  const d = isDiff ? { lw: new Float64Array(n), ls: new Float64Array(n), rw: new Float64Array(n), rs: new Float64Array(n), lt: Number(fg.leftTicks || 0), rt: Number(fg.rightTicks || 0) } : undefined;
  let i = 0;
  for (let l = 0; l < lv.length; l++) {
    levels[l] = i;
    const v = lv[l].values || [];
    let prev = 0;
    let prevR = 0;
    for (let j = 0; j + k <= v.length; j += k, i++) {
      if (d) {
        const xl = prev + Number(v[j]);
        const wl = Number(v[j + 1]);
        const xr = prevR + Number(v[j + 3]);
        const wr = Number(v[j + 4]);
        d.lw[i] = wl;
        d.ls[i] = Number(v[j + 2]);
        d.rw[i] = wr;
        d.rs[i] = Number(v[j + 5]);
        prev = xl + wl;
        prevR = xr + wr;
        x[i] = xl + xr;
        w[i] = wl + wr;
        self[i] = d.ls[i] + d.rs[i];
        name[i] = Number(v[j + 6]);
      } else {
        x[i] = prev + Number(v[j]);
        w[i] = Number(v[j + 1]);
        self[i] = Number(v[j + 2]);
        name[i] = Number(v[j + 3]);
        prev = x[i] + w[i];
      }
    }
  }
  levels[lv.length] = i;
  linkParents(x, w, levels, parent);
  const total = n ? w[0] : 0;
  return { names, x, w, self, name, parent, levels, total, diff: d };
}

/// Each node's parent: the node of the level above whose span holds its start.
function linkParents(x: Float64Array, w: Float64Array, levels: Int32Array, parent: Int32Array): void {
  if (parent.length) parent[0] = -1;
  for (let l = 1; l < levels.length - 1; l++) {
    let p = levels[l - 1];
    const pend = levels[l];
    for (let i = levels[l]; i < levels[l + 1]; i++) {
      while (p < pend - 1 && x[p] + w[p] <= x[i]) p++;
      parent[i] = p;
    }
  }
}

/// [first, end) of each node's children.
export function children(f: Flame): [Int32Array, Int32Array] {
  const n = size(f);
  const first = new Int32Array(n).fill(-1);
  const end = new Int32Array(n);
  for (let i = 1; i < n; i++) {
    const p = f.parent[i];
    if (first[p] < 0) first[p] = i;
    end[p] = i + 1;
  }
  return [first, end];
}

/// Depth-first walk calling enter/leave, without recursion.
export function walk(f: Flame, from: number, enter: (i: number) => void, leave: (i: number) => void): void {
  if (!size(f)) return;
  const [first, end] = children(f);
  const stack = [from];
  while (stack.length) {
    const i = stack.pop()!;
    if (i < 0) {
      leave(~i);
      continue;
    }
    enter(i);
    stack.push(~i);
    if (first[i] >= 0) for (let c = end[i] - 1; c >= first[i]; c--) stack.push(c);
  }
}

export interface Row {
  name: number;
  self: number;
  total: number;
  // a diff's sides
  ls: number;
  lt: number;
  rs: number;
  rt: number;
}

/// The top table: each function's self and total, a total counted once per stack however
/// often the function recurses in it.
export function topTable(f: Flame): Row[] {
  const m = f.names.length;
  const self = new Float64Array(m);
  const total = new Float64Array(m);
  const ls = new Float64Array(m);
  const lt = new Float64Array(m);
  const rs = new Float64Array(m);
  const rt = new Float64Array(m);
  const seen = new Uint8Array(m);
  const onPath = new Int32Array(m);
  const d = f.diff;
  walk(
    f,
    0,
    (i) => {
      const nm = f.name[i];
      if (i === 0) return;
      seen[nm] = 1;
      self[nm] += f.self[i];
      if (d) {
        ls[nm] += d.ls[i];
        rs[nm] += d.rs[i];
      }
      if (onPath[nm]++ === 0) {
        total[nm] += f.w[i];
        if (d) {
          lt[nm] += d.lw[i];
          rt[nm] += d.rw[i];
        }
      }
    },
    (i) => {
      if (i !== 0) onPath[f.name[i]]--;
    },
  );
  const rows: Row[] = [];
  for (let nm = 0; nm < m; nm++) if (seen[nm]) rows.push({ name: nm, self: self[nm], total: total[nm], ls: ls[nm], lt: lt[nm], rs: rs[nm], rt: rt[nm] });
  return rows;
}

/// Which names match a search (case-insensitive substring), and the share of the total
/// their outermost nodes hold.
export function search(f: Flame, q: string): { match: Uint8Array | null; share: number; nodes: number } {
  if (!q) return { match: null, share: 0, nodes: 0 };
  const needle = q.toLowerCase();
  const match = new Uint8Array(f.names.length);
  f.names.forEach((s, i) => (match[i] = s.toLowerCase().includes(needle) ? 1 : 0));
  const n = size(f);
  const inside = new Uint8Array(n);
  let share = 0;
  let nodes = 0;
  for (let i = 1; i < n; i++) {
    const p = f.parent[i];
    const hit = match[f.name[i]];
    if (hit) nodes++;
    inside[i] = inside[p] || (p > 0 && match[f.name[p]]) ? 1 : 0;
    if (hit && !inside[i]) share += f.w[i];
  }
  return { match, share, nodes };
}

// A tree with children by name, to merge subtrees (focus, sandwich) and lay them out again.
interface TNode {
  name: number;
  v: Float64Array; // total, self, and for a diff: left total, left self, right total, right self
  kids: Map<number, TNode>;
}
const tnode = (name: number, k: number): TNode => ({ name, v: new Float64Array(k), kids: new Map() });
const kid = (t: TNode, name: number, k: number) => {
  let c = t.kids.get(name);
  if (!c) t.kids.set(name, (c = tnode(name, k)));
  return c;
};

function values(f: Flame, i: number, out: Float64Array, scale = 1, selfToo = true): void {
  out[0] += f.w[i] * scale;
  if (selfToo) out[1] += f.self[i] * scale;
  if (f.diff) {
    out[2] += f.diff.lw[i] * scale;
    out[4] += f.diff.rw[i] * scale;
    if (selfToo) {
      out[3] += f.diff.ls[i] * scale;
      out[5] += f.diff.rs[i] * scale;
    }
  }
}

/// Lays a tree out as a flame graph, children in name order.
function layout(root: TNode, f: Flame): Flame {
  const diff = !!f.diff;
  const nodes: TNode[] = [];
  const xs: number[] = [];
  const lxs: number[] = [];
  const rxs: number[] = [];
  const parents: number[] = [];
  const levels: number[] = [];
  let level: { t: TNode; x: number; lx: number; rx: number; p: number }[] = [{ t: root, x: 0, lx: 0, rx: 0, p: -1 }];
  while (level.length) {
    levels.push(nodes.length);
    const next: typeof level = [];
    for (const e of level) {
      const id = nodes.length;
      nodes.push(e.t);
      xs.push(e.x);
      lxs.push(e.lx);
      rxs.push(e.rx);
      parents.push(e.p);
      let { x, lx, rx } = e;
      const kids = [...e.t.kids.values()].sort((a, b) => (f.names[a.name] < f.names[b.name] ? -1 : 1));
      for (const c of kids) {
        next.push({ t: c, x, lx, rx, p: id });
        x += c.v[0];
        lx += c.v[2];
        rx += c.v[4];
      }
    }
    level = next;
  }
  levels.push(nodes.length);
  const n = nodes.length;
  const col = (j: number) => Float64Array.from(nodes, (t) => t.v[j]);
  const out: Flame = {
    names: f.names,
    x: Float64Array.from(xs),
    w: col(0),
    self: col(1),
    name: Int32Array.from(nodes, (t) => t.name),
    parent: Int32Array.from(parents),
    levels: Int32Array.from(levels),
    total: n ? nodes[0].v[0] : 0,
  };
  if (diff) out.diff = { lw: col(2), ls: col(3), rw: col(4), rs: col(5), lt: f.diff!.lt, rt: f.diff!.rt };
  return out;
}

/// Adds node i's subtree under t.
function graft(f: Flame, i: number, t: TNode, first: Int32Array, end: Int32Array, k: number): void {
  const stack: [number, TNode][] = [[i, t]];
  while (stack.length) {
    const [j, at] = stack.pop()!;
    values(f, j, at.v);
    if (first[j] >= 0) for (let c = first[j]; c < end[j]; c++) stack.push([c, kid(at, f.name[c], k)]);
  }
}

/// The subtree of node i alone, i its root.
export function focus(f: Flame, i: number): Flame {
  const k = f.diff ? 6 : 2;
  const [first, end] = children(f);
  const root = tnode(f.name[i], k);
  graft(f, i, root, first, end, k);
  return layout(root, f);
}

/// The outermost nodes named `nm` (those with no ancestor of the same name).
function outermost(f: Flame, nm: number): number[] {
  const out: number[] = [];
  let depthOf = 0;
  walk(
    f,
    0,
    (i) => {
      if (f.name[i] === nm && i !== 0) {
        if (depthOf === 0) out.push(i);
        depthOf++;
      }
    },
    (i) => {
      if (f.name[i] === nm && i !== 0) depthOf--;
    },
  );
  return out;
}

/// Sandwich: the callees of function nm (its subtrees merged) and its callers (the paths that
/// reach it, merged from nm upward: drawn inverted).
export function sandwich(f: Flame, nm: number): { callers: Flame; callees: Flame } {
  const k = f.diff ? 6 : 2;
  const [first, end] = children(f);
  const callees = tnode(nm, k);
  const callers = tnode(nm, k);
  for (const i of outermost(f, nm)) {
    graft(f, i, callees, first, end, k);
    values(f, i, callers.v, 1, false);
    let at = callers;
    for (let p = f.parent[i]; p > 0; p = f.parent[p]) {
      at = kid(at, f.name[p], k);
      values(f, i, at.v, 1, false);
    }
    // the outermost caller: where the stack starts, its "self" here
    at.v[1] += f.w[i];
    if (f.diff) {
      at.v[3] += f.diff.lw[i];
      at.v[5] += f.diff.rw[i];
    }
  }
  return { callers: layout(callers, f), callees: layout(callees, f) };
}

/// Node i's stack: the names from the root's child down to it, `;`-joined.
export function stack(f: Flame, i: number): string {
  const names: string[] = [];
  for (let a = i; a > 0; a = f.parent[a]) names.push(f.names[f.name[a]]);
  return names.reverse().join(';');
}

/// The node at the end of a stack of names from the root, or -1.
export function find(f: Flame, path: string[]): number {
  let at = 0;
  for (let l = 0; l < path.length; l++) {
    if (l + 1 >= depth(f)) return -1;
    let next = -1;
    for (let i = f.levels[l + 1]; i < f.levels[l + 2]; i++) {
      if (f.parent[i] === at && f.names[f.name[i]] === path[l]) {
        next = i;
        break;
      }
    }
    if (next < 0) return -1;
    at = next;
  }
  return path.length ? at : -1;
}

// The flame graph, drawn on a canvas: rectangles batched by colour (one fill per colour),
// nodes narrower than a pixel merged, text only where it fits; hit-testing by binary search
// within a level, so hover, click-to-zoom and search stay fast on 100k nodes.
import { h } from './dom';
import { fmtValue, pct, type Unit } from './format';
import { depth, levelOf, search, size, type Flame } from './tree';

const ROW = 18;
const FONT = '12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace';
const PALETTE = [
  '#f6a04d', '#f4c04d', '#e8d35a', '#bfd95d', '#8fd16a', '#6cc98b', '#5cc4b5', '#62b9d9',
  '#7aa6ea', '#9a95ee', '#b98be6', '#d883d6', '#ef7fb4', '#f48a8a', '#f7a27a', '#d6b27b',
  '#a9c47f', '#86c9a8', '#86b8cf', '#a3a7d9',
];
const GREY = '#d6d6d6';
const DIMMED = '#ececec';
const TINY = '#c9c9c9';
const HIT = '#e8a33d';

/// The package part of a function name: what colours it.
function pkg(name: string): string {
  const slash = name.lastIndexOf('/');
  const rest = name.slice(slash + 1);
  const m = /^[^.:(\s]*/.exec(rest);
  return name.slice(0, slash + 1) + (m ? m[0] : rest);
}
function hash(s: string): number {
  let x = 2166136261;
  for (let i = 0; i < s.length; i++) x = Math.imul(x ^ s.charCodeAt(i), 16777619);
  return x >>> 0;
}

/// A diff's colour: red where the comparison spends more of its total than the baseline,
/// green where less, grey where equal; quantised so that rectangles batch.
export function diffColor(lw: number, lt: number, rw: number, rt: number): string {
  const lp = lt > 0 ? lw / lt : 0;
  const rp = rt > 0 ? rw / rt : 0;
  const c = lp === 0 ? (rp > 0 ? 1 : 0) : Math.max(-1, Math.min(1, (rp - lp) / lp));
  // small changes still show: the intensity grows with the square root of the change
  const a = Math.round(Math.sqrt(Math.abs(c)) * 12) / 12;
  if (a === 0) return 'rgb(200,200,200)';
  const mix = (from: number, to: number) => Math.round(from + (to - from) * (0.3 + 0.7 * a));
  return c > 0 ? `rgb(${mix(200, 229)},${mix(200, 57)},${mix(200, 53)})` : `rgb(${mix(200, 48)},${mix(200, 164)},${mix(200, 108)})`;
}

export interface FlameOptions {
  unit: Unit;
  inverted?: boolean;
  onZoom?: (i: number) => void;
  onFocus?: (i: number) => void;
  onSandwich?: (name: number) => void;
  onSearch?: (name: string) => void;
}

export class FlameGraph {
  readonly el: HTMLElement;
  readonly canvas: HTMLCanvasElement;
  private ctx: CanvasRenderingContext2D;
  private f: Flame | null = null;
  private zoom = 0;
  private match: Uint8Array | null = null;
  private colors: string[] = [];
  private tip: HTMLElement;
  private hoverCanvas: HTMLCanvasElement;
  private menu: HTMLElement | null = null;
  private hovered = -1;
  private frame = 0;
  private lastWidth = 0;
  lastDrawMs = 0;

  constructor(private opts: FlameOptions) {
    this.canvas = h('canvas', { class: 'flame-canvas', 'aria-label': 'flame graph' });
    this.ctx = this.canvas.getContext('2d', { alpha: false })!;
    this.tip = h('div', { class: 'tooltip', hidden: true });
    this.hoverCanvas = h('canvas', { class: 'flame-hover' });
    this.el = h('div', { class: 'flame' }, this.canvas, this.hoverCanvas, this.tip);
    this.canvas.addEventListener('mousemove', (e) => this.hover(e));
    this.canvas.addEventListener('mouseleave', () => this.hideTip());
    this.canvas.addEventListener('click', (e) => this.click(e));
    this.canvas.addEventListener('contextmenu', (e) => this.context(e));
    new ResizeObserver(() => {
      if (this.canvas.clientWidth !== this.lastWidth) this.schedule();
    }).observe(this.el);
  }

  setData(f: Flame): void {
    this.f = f;
    this.zoom = 0;
    this.colors = f.names.map((n) => (n === 'other' || n === 'total' ? GREY : PALETTE[hash(pkg(n)) % PALETTE.length]));
    this.match = null;
    this.draw();
  }

  /// Highlights the functions whose names contain q; returns the share of the total they hold.
  setSearch(q: string): { share: number; nodes: number } {
    if (!this.f) return { share: 0, nodes: 0 };
    const s = search(this.f, q);
    this.match = s.match;
    this.draw();
    return { share: s.share / (this.f.total || 1), nodes: s.nodes };
  }

  zoomTo(i: number): void {
    this.zoom = i;
    this.draw();
    this.opts.onZoom?.(i);
  }

  zoomed(): number {
    return this.zoom;
  }

  private schedule(): void {
    cancelAnimationFrame(this.frame);
    this.frame = requestAnimationFrame(() => this.draw());
  }

  draw(): void {
    const f = this.f;
    if (!f || !size(f)) return;
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const width = (this.lastWidth = this.canvas.clientWidth || this.el.clientWidth || 800);
    const D = Math.min(depth(f), 2000);
    const height = D * ROW;
    this.canvas.style.height = height + 'px';
    this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, width, height);
    ctx.font = FONT;
    ctx.textBaseline = 'middle';
    const cw = ctx.measureText('m').width;

    const z = this.zoom;
    const zl = levelOf(f, z);
    const x0 = f.x[z];
    const x1 = x0 + f.w[z];
    const k = width / (x1 - x0 || 1);
    const match = this.match;
    const batches = new Map<string, number[]>();
    const texts: number[] = [];
    const rect = (color: string, px: number, y: number, pw: number) => {
      let b = batches.get(color);
      if (!b) batches.set(color, (b = []));
      b.push(px, y, pw);
    };
    const y = (l: number) => (this.opts.inverted ? (D - 1 - l) * ROW : l * ROW);

    // The zoomed node's ancestors, full width.
    for (let a = f.parent[z], l = zl - 1; a >= 0; a = f.parent[a], l--) {
      rect(DIMMED, 0, y(l), width);
      texts.push(a, 0, y(l), width);
    }
    for (let l = zl; l < D; l++) {
      const hi = f.levels[l + 1];
      let lo = f.levels[l];
      // the first node ending after x0
      let b = hi;
      while (lo < b) {
        const m = (lo + b) >> 1;
        if (f.x[m] + f.w[m] <= x0) lo = m + 1;
        else b = m;
      }
      // Runs of nodes narrower than a pixel are drawn as one rectangle: grey, or under a
      // search, highlighted when the run holds a match and dimmed when not.
      let tinyFrom = -1;
      let tinyTo = -1;
      let tinyHit = false;
      const yl = y(l);
      const flush = () => {
        if (tinyTo - tinyFrom >= 0.5) rect(!match ? TINY : tinyHit ? HIT : DIMMED, tinyFrom, yl, tinyTo - tinyFrom);
      };
      for (let i = lo; i < hi && f.x[i] < x1; i++) {
        const px = (f.x[i] - x0) * k;
        const pw = f.w[i] * k;
        if (pw < 1) {
          if (tinyTo < px - 0.5) {
            flush();
            tinyFrom = px;
            tinyHit = false;
          }
          tinyTo = px + pw;
          if (match && match[f.name[i]]) tinyHit = true;
          continue;
        }
        rect(this.color(i), px, yl, pw > 3 ? pw - 1 : pw);
        if (pw > cw * 3 + 6) texts.push(i, px, yl, pw);
      }
      flush();
    }
    for (const [color, b] of batches) {
      ctx.fillStyle = color;
      ctx.beginPath();
      for (let j = 0; j < b.length; j += 3) ctx.rect(b[j], b[j + 1], b[j + 2], ROW - 1);
      ctx.fill();
    }
    ctx.fillStyle = '#1d1d1f';
    for (let j = 0; j < texts.length; j += 4) {
      const name = f.names[f.name[texts[j]]];
      const fits = Math.floor((texts[j + 3] - 6) / cw);
      ctx.fillText(name.length <= fits ? name : name.slice(0, Math.max(0, fits - 1)) + '…', texts[j + 1] + 3, texts[j + 2] + ROW / 2);
    }
    this.lastDrawMs = performance.now() - t0;
    this.hovered = -1;
    this.outline(-1);
  }

  private color(i: number): string {
    const f = this.f!;
    if (this.match && !this.match[f.name[i]]) return DIMMED;
    if (f.diff) return diffColor(f.diff.lw[i], f.diff.lt, f.diff.rw[i], f.diff.rt);
    return this.colors[f.name[i]];
  }

  /// The node under a point of the canvas (CSS pixels), or -1.
  nodeAt(cx: number, cy: number): number {
    const f = this.f;
    if (!f || !size(f)) return -1;
    const D = Math.min(depth(f), 2000);
    let l = Math.floor(cy / ROW);
    if (this.opts.inverted) l = D - 1 - l;
    if (l < 0 || l >= D) return -1;
    const z = this.zoom;
    const zl = levelOf(f, z);
    if (l < zl) {
      let a = z;
      for (let m = zl; m > l; m--) a = f.parent[a];
      return a;
    }
    const x0 = f.x[z];
    const u = x0 + (cx / (this.canvas.clientWidth || 1)) * f.w[z];
    let lo = f.levels[l];
    let hi = f.levels[l + 1] - 1;
    while (lo <= hi) {
      const m = (lo + hi) >> 1;
      if (f.x[m] + f.w[m] <= u) lo = m + 1;
      else if (f.x[m] > u) hi = m - 1;
      else return u < x0 + f.w[z] ? m : -1;
    }
    return -1;
  }

  private at(e: MouseEvent): number {
    const r = this.canvas.getBoundingClientRect();
    return this.nodeAt(e.clientX - r.left, e.clientY - r.top);
  }

  /// Node i's rectangle on the canvas (CSS pixels, clipped to the zoomed range).
  private rectOf(i: number): { x: number; y: number; w: number } {
    const f = this.f!;
    const z = this.zoom;
    const k = this.canvas.clientWidth / f.w[z];
    const D = Math.min(depth(f), 2000);
    const l = levelOf(f, i);
    if (l < levelOf(f, z)) return { x: 0, y: (this.opts.inverted ? D - 1 - l : l) * ROW, w: this.canvas.clientWidth };
    const x0 = Math.max(f.x[i], f.x[z]);
    const x1 = Math.min(f.x[i] + f.w[i], f.x[z] + f.w[z]);
    return { x: (x0 - f.x[z]) * k, y: (this.opts.inverted ? D - 1 - l : l) * ROW, w: (x1 - x0) * k };
  }

  /// Where a function is drawn, widest first: the centre of its rectangle in the viewport's
  /// coordinates, or null when it is not drawn (for tests and the console).
  locate(name: string): { x: number; y: number; width: number } | null {
    const f = this.f;
    if (!f) return null;
    const nm = f.names.indexOf(name);
    let best = -1;
    const z = this.zoom;
    for (let i = f.levels[levelOf(f, z)]; i < size(f); i++) {
      if (f.name[i] === nm && f.x[i] >= f.x[z] && f.x[i] < f.x[z] + f.w[z] && (best < 0 || f.w[i] > f.w[best])) best = i;
    }
    if (best < 0) return null;
    const r = this.canvas.getBoundingClientRect();
    const b = this.rectOf(best);
    return { x: r.left + b.x + b.w / 2, y: r.top + b.y + ROW / 2, width: b.w };
  }

  /// Outlines the hovered node on a canvas of its own, so hovering never redraws the graph.
  private outline(i: number): void {
    const c = this.hoverCanvas;
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth;
    const hgt = this.canvas.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
      c.style.height = hgt + 'px';
    }
    const ctx = c.getContext('2d')!;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    if (i < 0) return;
    const b = this.rectOf(i);
    ctx.strokeStyle = '#1d1d1f';
    ctx.lineWidth = 1.5;
    ctx.strokeRect(b.x + 0.75, b.y + 0.75, Math.max(1, b.w - 1.5), ROW - 2.5);
  }

  nameOf(i: number): string {
    return this.f && i >= 0 ? this.f.names[this.f.name[i]] : '';
  }

  private hover(e: MouseEvent): void {
    const i = this.at(e);
    this.canvas.style.cursor = i >= 0 ? 'pointer' : 'default';
    if (i < 0) return this.hideTip();
    if (i !== this.hovered) {
      this.hovered = i;
      this.tip.replaceChildren(...this.describe(i));
      this.outline(i);
    }
    this.tip.hidden = false;
    const pad = 14;
    const tw = this.tip.offsetWidth;
    const left = e.clientX + pad + tw > window.innerWidth ? e.clientX - tw - pad : e.clientX + pad;
    this.tip.style.left = Math.max(0, left) + 'px';
    this.tip.style.top = e.clientY + pad + 'px';
  }

  private describe(i: number): Node[] {
    const f = this.f!;
    const u = this.opts.unit;
    const rows: Node[] = [h('div', { class: 'tip-name' }, f.names[f.name[i]])];
    if (f.diff) {
      const d = f.diff;
      const lp = d.lt ? d.lw[i] / d.lt : 0;
      const rp = d.rt ? d.rw[i] / d.rt : 0;
      const change = lp === 0 ? (rp > 0 ? 'new' : '0%') : (rp >= lp ? '+' : '') + (((rp - lp) / lp) * 100).toFixed(1) + '%';
      rows.push(
        h('div', null, `Baseline: ${pct(d.lw[i], d.lt)} (${fmtValue(d.lw[i], u)}), self ${fmtValue(d.ls[i], u)}`),
        h('div', null, `Comparison: ${pct(d.rw[i], d.rt)} (${fmtValue(d.rw[i], u)}), self ${fmtValue(d.rs[i], u)}`),
        h('div', { class: 'tip-change' }, `Change: ${change}`),
      );
    } else {
      rows.push(h('div', null, `Total: ${fmtValue(f.w[i], u)} (${pct(f.w[i], f.total)})`), h('div', null, `Self: ${fmtValue(f.self[i], u)} (${pct(f.self[i], f.total)})`));
    }
    rows.push(h('div', { class: 'tip-hint' }, 'click: zoom · right-click: focus, sandwich'));
    return rows;
  }

  private hideTip(): void {
    this.tip.hidden = true;
    if (this.hovered >= 0) this.outline(-1);
    this.hovered = -1;
  }

  private click(e: MouseEvent): void {
    const i = this.at(e);
    if (i < 0) return;
    this.zoomTo(i === this.zoom ? Math.max(0, this.f!.parent[i]) : i);
  }

  private context(e: MouseEvent): void {
    const i = this.at(e);
    if (i < 0) return;
    e.preventDefault();
    this.closeMenu();
    const f = this.f!;
    const name = f.names[f.name[i]];
    const item = (label: string, act: () => void) =>
      h('button', { type: 'button', onclick: () => (this.closeMenu(), act()) }, label);
    const m = h(
      'div',
      { class: 'menu', role: 'menu' },
      item('Zoom in', () => this.zoomTo(i)),
      this.opts.onFocus && item('Focus on this subtree', () => this.opts.onFocus!(i)),
      this.opts.onSandwich && item('Sandwich view (callers and callees)', () => this.opts.onSandwich!(f.name[i])),
      this.opts.onSearch && item('Highlight this function', () => this.opts.onSearch!(name)),
      item('Copy function name', () => navigator.clipboard?.writeText(name)),
    );
    m.style.left = e.clientX + 'px';
    m.style.top = e.clientY + 'px';
    document.body.appendChild(m);
    this.menu = m;
    const close = (ev: Event) => {
      if (ev instanceof KeyboardEvent && ev.key !== 'Escape') return;
      if (ev.type === 'mousedown' && m.contains(ev.target as Node)) return;
      this.closeMenu();
      document.removeEventListener('mousedown', close, true);
      document.removeEventListener('keydown', close, true);
    };
    document.addEventListener('mousedown', close, true);
    document.addEventListener('keydown', close, true);
  }

  private closeMenu(): void {
    this.menu?.remove();
    this.menu = null;
  }

  png(): Promise<Blob | null> {
    return new Promise((res) => this.canvas.toBlob(res, 'image/png'));
  }
}

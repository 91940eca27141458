// The timeline: SelectSeries drawn on a canvas (bars for one series, lines for several),
// with the selected ranges shaded; dragging across it picks a range.
import { h, state } from './dom';
import { fmtValue, type Unit } from './format';
import { fmtTime } from './time';

export interface Line {
  color: string;
  points: [number, number][]; // (ms, value)
}
export interface Shade {
  start: number;
  end: number;
  color: string;
}

const H = 110;
const AXIS = 18;
const TICKS = [1e3, 5e3, 15e3, 30e3, 60e3, 300e3, 900e3, 1800e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3, 7 * 86400e3, 30 * 86400e3];
export const COLORS = ['#3b7ddd', '#e5484d', '#30a46c', '#f5a524', '#8e4ec6', '#12a594', '#d6409f', '#6e56cf', '#978365', '#0090ff'];

export class Timeline {
  readonly el: HTMLElement;
  private canvas: HTMLCanvasElement;
  private lines: Line[] = [];
  private start = 0;
  private end = 1;
  private step = 0;
  private shades: Shade[] = [];
  private drag: { x0: number; x1: number } | null = null;
  private tip: HTMLElement;

  constructor(
    private unit: Unit,
    private onSelect: (start: number, end: number) => void,
    hint = 'Drag across the timeline to zoom into a range',
  ) {
    this.canvas = h('canvas', { class: 'timeline-canvas', title: hint, 'aria-label': 'timeline' });
    this.tip = h('div', { class: 'tooltip', hidden: true });
    this.el = h('div', { class: 'timeline' }, this.canvas, this.tip);
    this.canvas.addEventListener('mousemove', (e) => this.hover(e));
    this.canvas.addEventListener('mouseleave', () => (this.tip.hidden = true));
    this.canvas.addEventListener('mousedown', (e) => {
      const x = this.px(e);
      this.drag = { x0: x, x1: x };
      const move = (ev: MouseEvent) => {
        this.drag!.x1 = this.px(ev);
        this.draw();
      };
      const up = (ev: MouseEvent) => {
        window.removeEventListener('mousemove', move);
        window.removeEventListener('mouseup', up);
        const d = this.drag!;
        d.x1 = this.px(ev);
        this.drag = null;
        this.draw();
        if (Math.abs(d.x1 - d.x0) >= 3) this.onSelect(Math.round(this.time(Math.min(d.x0, d.x1))), Math.round(this.time(Math.max(d.x0, d.x1))));
      };
      window.addEventListener('mousemove', move);
      window.addEventListener('mouseup', up);
    });
    new ResizeObserver(() => this.draw()).observe(this.el);
  }

  set(lines: Line[], start: number, end: number, stepMs: number, shades: Shade[] = []): void {
    Object.assign(this, { lines, start, end, step: stepMs, shades });
    this.status(null);
    if (!lines.some((l) => l.points.length)) this.status('empty', 'No profiles match this query in the range.');
    this.draw();
  }

  private overlay: HTMLElement | null = null;
  /// A state over the timeline (loading, empty, an error), or none.
  status(kind: 'loading' | 'empty' | 'error' | null, text = ''): void {
    this.overlay?.remove();
    this.overlay = kind && state(kind, text);
    if (this.overlay) this.el.append(this.overlay);
  }

  /// The values at the pointer: each line's point within a step of it.
  private hover(e: MouseEvent): void {
    const t = this.time(this.px(e));
    const rows: HTMLElement[] = [];
    for (const l of this.lines) {
      // a bar at t stands for (t - step, t]
      const p = l.points.find(([pt]) => pt >= t && pt - this.step < t);
      if (p) rows.push(h('div', null, h('span', { class: 'swatch', style: `background:${l.color}` }), fmtValue(p[1], this.unit)));
    }
    if (this.drag || !rows.length) {
      this.tip.hidden = true;
      return;
    }
    this.tip.replaceChildren(h('div', { class: 'tip-name' }, fmtTime(t)), ...rows);
    this.tip.hidden = false;
    this.tip.style.left = Math.min(e.clientX + 12, window.innerWidth - this.tip.offsetWidth - 4) + 'px';
    this.tip.style.top = e.clientY + 12 + 'px';
  }

  private px(e: MouseEvent): number {
    const r = this.canvas.getBoundingClientRect();
    return Math.max(0, Math.min(r.width, e.clientX - r.left));
  }
  private time(px: number): number {
    return this.start + (px / (this.canvas.clientWidth || 1)) * (this.end - this.start);
  }

  draw(): void {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth || 800;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(H * dpr);
    const ctx = this.canvas.getContext('2d')!;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, H);
    const plotH = H - AXIS;
    const span = this.end - this.start || 1;
    const X = (t: number) => ((t - this.start) / span) * w;
    let max = 0;
    for (const l of this.lines) for (const p of l.points) max = Math.max(max, p[1]);
    const Y = (v: number) => plotH - (max > 0 ? (v / max) * (plotH - 14) : 0);

    for (const s of this.shades) {
      ctx.fillStyle = s.color;
      ctx.fillRect(X(s.start), 0, Math.max(1, X(s.end) - X(s.start)), plotH);
    }
    // axis and ticks
    ctx.strokeStyle = '#ccc';
    ctx.beginPath();
    ctx.moveTo(0, plotH + 0.5);
    ctx.lineTo(w, plotH + 0.5);
    ctx.stroke();
    ctx.fillStyle = '#666';
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'top';
    const tick = TICKS.find((t) => (t / span) * w >= 90) || TICKS[TICKS.length - 1];
    const off = new Date().getTimezoneOffset() * 60e3;
    for (let t = Math.ceil((this.start - off) / tick) * tick + off; t <= this.end; t += tick) {
      const x = X(t);
      ctx.fillRect(x, plotH, 1, 4);
      const s = fmtTime(t);
      ctx.fillText(tick >= 86400e3 ? s.slice(5, 10) : tick < 60e3 ? s.slice(11) : s.slice(11, 16), x + 3, plotH + 4);
    }
    if (max > 0) ctx.fillText(fmtValue(max, this.unit), 4, 2);

    const bw = Math.max(1, (this.step / span) * w - 1);
    this.lines.forEach((l) => {
      if (this.lines.length === 1) {
        ctx.fillStyle = l.color;
        for (const [t, v] of l.points) ctx.fillRect(X(t) - bw, Y(v), bw, plotH - Y(v));
        return;
      }
      ctx.strokeStyle = ctx.fillStyle = l.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      // a gap of more than a step and a half has no data: the line breaks there
      l.points.forEach(([t, v], i) => (i && t - l.points[i - 1][0] <= this.step * 1.5 ? ctx.lineTo(X(t), Y(v)) : ctx.moveTo(X(t), Y(v))));
      ctx.stroke();
      if (l.points.length < 120) for (const [t, v] of l.points) ctx.fillRect(X(t) - 1.5, Y(v) - 1.5, 3, 3);
    });
    if (this.drag) {
      ctx.fillStyle = 'rgba(59,125,221,0.2)';
      ctx.fillRect(Math.min(this.drag.x0, this.drag.x1), 0, Math.abs(this.drag.x1 - this.drag.x0), plotH);
    }
  }
}

/// The SelectSeries step, in seconds, for a range: about 300 points across.
export const stepFor = (start: number, end: number) => Math.max(10, Math.ceil((end - start) / 1000 / 300));

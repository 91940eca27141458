// The top table: each function's self and total (a diff: each side's share and the change),
// sortable by any column and filtered by the search. At most LIMIT rows are in the DOM.
import { h } from './dom';
import { fmtValue, pct, type Unit } from './format';
import { topTable, type Flame, type Row } from './tree';

const LIMIT = 500;
type Key = 'name' | 'self' | 'total' | 'left' | 'right' | 'change';

const share = (v: number, t: number) => (t > 0 ? v / t : 0);
function change(r: Row, lt: number, rt: number): number {
  const l = share(r.lt, lt);
  const rr = share(r.rt, rt);
  return l === 0 ? (rr > 0 ? Infinity : 0) : (rr - l) / l;
}

export class TopTable {
  readonly el: HTMLElement;
  private rows: Row[] = [];
  private f: Flame | null = null;
  private key: Key = 'self';
  private desc = true;
  private filter = '';

  constructor(
    private unit: Unit,
    private onPick: (name: string) => void,
    private onSandwich?: (name: number) => void,
  ) {
    this.el = h('div', { class: 'top-table' });
  }

  setData(f: Flame): void {
    this.f = f;
    this.rows = topTable(f);
    if (f.diff && (this.key === 'self' || this.key === 'total')) this.key = 'change';
    this.render();
  }

  setFilter(q: string): void {
    this.filter = q.toLowerCase();
    this.render();
  }

  private value(r: Row, k: Key): number | string {
    const f = this.f!;
    switch (k) {
      case 'name':
        return f.names[r.name];
      case 'self':
        return r.self;
      case 'total':
        return r.total;
      case 'left':
        return share(r.lt, f.diff!.lt);
      case 'right':
        return share(r.rt, f.diff!.rt);
      case 'change':
        return change(r, f.diff!.lt, f.diff!.rt);
    }
  }

  private render(): void {
    const f = this.f;
    if (!f) return;
    const names = f.names;
    let rows = this.filter ? this.rows.filter((r) => names[r.name].toLowerCase().includes(this.filter)) : this.rows.slice();
    const k = this.key;
    const dir = this.desc ? -1 : 1;
    rows.sort((a, b) => {
      const x = this.value(a, k);
      const y = this.value(b, k);
      return (x < y ? -1 : x > y ? 1 : 0) * dir || (names[a.name] < names[b.name] ? -1 : 1);
    });
    const shown = rows.length;
    rows = rows.slice(0, LIMIT);
    const d = f.diff;
    const cols: [Key, string][] = d ? [['name', 'Function'], ['left', 'Baseline'], ['right', 'Comparison'], ['change', 'Change']] : [['name', 'Function'], ['self', 'Self'], ['total', 'Total']];
    const th = ([key, label]: [Key, string]) =>
      h(
        'th',
        { 'aria-sort': key === k ? (this.desc ? 'descending' : 'ascending') : 'none', class: key === 'name' ? 'name' : 'num' },
        h('button', { type: 'button', onclick: () => this.sortBy(key) }, label, key === k ? (this.desc ? ' ▼' : ' ▲') : ''),
      );
    const u = this.unit;
    const cell = (v: number, t: number) => h('td', { class: 'num' }, fmtValue(v, u), h('span', { class: 'pct' }, pct(v, t)));
    const body = rows.map((r) => {
      const name = names[r.name];
      const tds = d
        ? [cell(r.lt, d.lt), cell(r.rt, d.rt), this.changeCell(change(r, d.lt, d.rt))]
        : [cell(r.self, f.total), cell(r.total, f.total)];
      return h(
        'tr',
        { onclick: () => this.onPick(name), title: 'Click to highlight in the flame graph' },
        h('td', { class: 'name' }, this.onSandwich && h('button', { type: 'button', class: 'sandwich', title: 'Sandwich view: callers and callees', onclick: (e: Event) => (e.stopPropagation(), this.onSandwich!(r.name)) }, '⇅'), name),
        tds,
      );
    });
    const note = shown === 0 ? (this.filter ? `No function matches “${this.filter}”.` : 'No functions.') : shown > LIMIT ? `Showing ${LIMIT} of ${shown} functions; search to narrow.` : `${shown} functions`;
    this.el.replaceChildren(h('table', null, h('thead', null, h('tr', null, cols.map(th))), h('tbody', null, body)), h('div', { class: 'table-note' }, note));
  }

  private changeCell(c: number): HTMLElement {
    const text = c === Infinity ? 'new' : (c > 0 ? '+' : '') + (c * 100).toFixed(1) + '%';
    return h('td', { class: 'num ' + (c > 0 ? 'up' : c < 0 ? 'down' : '') }, text);
  }

  private sortBy(k: Key): void {
    if (this.key === k) this.desc = !this.desc;
    else {
      this.key = k;
      this.desc = k !== 'name';
    }
    this.render();
  }
}

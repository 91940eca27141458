// The pieces the views share: the query bar (service, profile type, label filter), the time
// picker, and a flame graph with its top table, toolbar and states.
import * as api from './api';
import { download, h, replace, select, state } from './dom';
import { FlameGraph } from './flame';
import { fmtValue, pct, unitOf } from './format';
import { formatQuery, parseQuery, selector, service, SERVICE, withMatcher, without, type Op, type Query } from './query';
import { TopTable } from './table';
import { fmtTime, PRESETS, urlTime, type Resolved } from './time';
import { find, focus, sandwich, stack, type Flame } from './tree';

export interface Ctx {
  now: number;
  alive: () => boolean;
}

export const flames: FlameGraph[] = [];

const typeLabel = (id: string) => {
  const [name, sample, unit] = id.split(':');
  return unit ? `${name} · ${sample} (${unit})` : id;
};

function preferred(types: string[]): string {
  return types.find((t) => /^process_cpu:cpu:/.test(t)) || types.find((t) => /:cpu:/.test(t)) || types[0] || '';
}

export interface Settled {
  q: Query;
  services: string[];
  types: string[];
}

/// The query completed from what exists: a service and profile type picked when the URL
/// names none (the first service, its CPU type when it has one). Null when kiln holds no
/// profiles in the range.
export async function settle(text: string, r: Resolved): Promise<Settled | null> {
  const services = await api.labelValues(SERVICE, [], r);
  let q = parseQuery(text);
  let svc = service(q);
  if (!svc) {
    if (!services.length) return null;
    svc = services[0];
    q = withMatcher(q, { name: SERVICE, op: '=', value: svc });
  }
  const types = await api.labelValues('__profile_type__', [selector([{ name: SERVICE, op: '=', value: svc }])], r);
  if (!q.profileType || (!types.includes(q.profileType) && !text)) q = { ...q, profileType: preferred(types) || q.profileType };
  if (!q.profileType) return null;
  return { q, services, types };
}

export function noProfiles(r: Resolved): HTMLElement {
  return h(
    'div',
    { class: 'state empty', role: 'status' },
    h('p', null, `No profiles between ${fmtTime(r.start)} and ${fmtTime(r.end)}.`),
    h('p', null, 'Widen the time range, or push a profile with any Pyroscope SDK, Grafana Alloy, or curl:'),
    h('pre', null, `curl -X POST --data-binary @cpu.pprof '${location.origin}/ingest?name=myapp&format=pprof'`),
  );
}

/// Service and profile-type pickers, the label filter and the query as text.
export function queryBar(s: Settled, r: Resolved, onChange: (q: Query) => void, label = ''): HTMLElement {
  const q = s.q;
  const svc = service(q);
  const services = s.services.includes(svc) ? s.services : [svc, ...s.services];
  const types = s.types.includes(q.profileType) ? s.types : [q.profileType, ...s.types];
  const setService = async (v: string) => {
    const nq = withMatcher({ profileType: q.profileType, matchers: q.matchers.filter((m) => m.name !== SERVICE) }, { name: SERVICE, op: '=', value: v });
    // keep the profile type when the new service has it
    const t = await api.labelValues('__profile_type__', [selector([{ name: SERVICE, op: '=', value: v }])], r).catch((): string[] => []);
    onChange({ ...nq, profileType: t.includes(q.profileType) ? q.profileType : preferred(t) || q.profileType });
  };
  const chips = q.matchers.map((m, i) =>
    m.name === SERVICE && m.op === '='
      ? null
      : h('span', { class: 'chip' }, `${m.name}${m.op}"${m.value}"`, h('button', { type: 'button', title: 'Remove this filter', 'aria-label': `remove ${m.name}`, onclick: () => onChange(without(q, i)) }, '×')),
  );
  const raw = h('input', { class: 'raw-query', value: formatQuery(q), spellcheck: 'false', 'aria-label': 'query', title: 'The query: <profile type>{<label selector>}; Enter applies' });
  raw.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') onChange(parseQuery(raw.value));
  });
  return h(
    'div',
    { class: 'query-bar' },
    label && h('span', { class: 'side-label' }, label),
    h('label', null, 'Service ', select(services.map((x) => [x, x]), svc, setService, { class: 'service-picker', 'aria-label': 'service' })),
    h('label', null, 'Profile ', select(types.map((t) => [t, typeLabel(t)]), q.profileType, (t) => onChange({ ...q, profileType: t }), { class: 'type-picker', 'aria-label': 'profile type' })),
    h('span', { class: 'chips' }, chips),
    labelAdder(q, r, onChange),
    raw,
  );
}

/// "+ Filter": a label name, an operator and a value (suggested from LabelValues).
function labelAdder(q: Query, r: Resolved, onChange: (q: Query) => void): HTMLElement {
  const box = h('span', { class: 'adder' });
  const open = async () => {
    replace(box, h('span', { class: 'muted' }, 'loading labels…'));
    let names: string[];
    try {
      names = (await api.labelNames([selector(q.matchers)], r)).filter((n) => !n.startsWith('__') && n !== SERVICE);
    } catch (e) {
      replace(box, state('error', (e as Error).message));
      return;
    }
    if (!names.length) {
      replace(box, h('span', { class: 'muted' }, 'these profiles have no labels to filter by'));
      return;
    }
    const list = h('datalist', { id: 'label-values-' + Math.random().toString(36).slice(2) });
    const value = h('input', { class: 'label-value', list: list.id, placeholder: 'value', 'aria-label': 'label value' });
    let op: Op = '=';
    const loadValues = async (n: string) => {
      const vals = await api.labelValues(n, [selector(q.matchers)], r).catch((): string[] => []);
      replace(list, vals.map((v) => h('option', { value: v })));
      if (vals.length && !value.value) value.value = vals[0];
    };
    const nameSel = select(names.map((n) => [n, n]), names[0], (n) => ((value.value = ''), loadValues(n)), { class: 'label-name', 'aria-label': 'label name' });
    const add = () => value.value && onChange(withMatcher(q, { name: nameSel.value, op, value: value.value }));
    value.addEventListener('keydown', (e) => e.key === 'Enter' && add());
    replace(
      box,
      nameSel,
      select([['=', '='], ['!=', '!='], ['=~', '=~'], ['!~', '!~']], '=', (o) => (op = o as Op), { 'aria-label': 'operator' }),
      value,
      list,
      h('button', { type: 'button', class: 'add-filter', onclick: add }, 'Add'),
    );
    await loadValues(names[0]);
  };
  box.append(h('button', { type: 'button', class: 'open-filter', onclick: open }, '+ Label filter'));
  return box;
}

/// Relative presets and free from/until fields.
export function timePicker(from: string, until: string, onApply: (from: string, until: string) => void, label = ''): HTMLElement {
  const f = h('input', { class: 'from', value: from, size: 12, 'aria-label': 'from', title: 'now-1h, unix seconds, or a date' });
  const u = h('input', { class: 'until', value: until, size: 12, 'aria-label': 'until' });
  const preset = PRESETS.some(([v]) => v === from) && until === 'now' ? from : '';
  const apply = () => onApply(f.value.trim() || 'now-1h', u.value.trim() || 'now');
  for (const i of [f, u]) i.addEventListener('keydown', (e) => e.key === 'Enter' && apply());
  return h(
    'div',
    { class: 'time-picker' },
    label && h('span', { class: 'side-label' }, label),
    select([['', 'Custom range'], ...PRESETS], preset, (v) => v && onApply(v, 'now'), { 'aria-label': 'time range' }),
    f,
    '→',
    u,
    h('button', { type: 'button', onclick: apply }, 'Apply'),
  );
}

export interface FlameViewOptions {
  profileType: string;
  search?: string;
  onSearch?: (q: string) => void;
  table?: boolean;
  /// The focused subtree (its stack, `;`-joined from the root) or the sandwiched function to
  /// open with, and where to record them (the URL).
  focus?: string;
  sandwich?: string;
  onState?: (changes: { focus: string | null; sandwich: string | null }) => void;
  exportReq?: api.MergeRequest & { query: string; name: string };
}

/// A flame graph beside its top table, with search, view modes, focus, sandwich and export.
export class FlameView {
  readonly el: HTMLElement;
  private body: HTMLElement;
  private bar: HTMLElement;
  private info: HTMLElement;
  private full: Flame | null = null;
  private shown: Flame | null = null;
  private flame: FlameGraph;
  private table: TopTable;
  private search: HTMLInputElement;
  private mode: 'both' | 'flame' | 'table' = 'both';
  private crumbs: HTMLElement;
  private totalEl: HTMLElement;

  constructor(private o: FlameViewOptions) {
    const unit = unitOf(o.profileType);
    const pick = (name: string) => this.setSearch(name);
    this.flame = new FlameGraph({
      unit,
      onZoom: (i) => this.crumb(i > 0 ? `Zoomed to ${this.flame.nameOf(i)}` : ''),
      onFocus: (i) => this.focusOn(i),
      onSandwich: (nm) => this.sandwich(nm),
      onSearch: pick,
    });
    flames.push(this.flame);
    this.table = new TopTable(unit, pick, (nm) => this.sandwich(nm));
    this.mode = o.table === false ? 'flame' : 'both';
    this.search = h('input', { type: 'search', class: 'search', placeholder: 'Search functions', value: o.search || '', 'aria-label': 'search functions' });
    this.search.addEventListener('input', () => this.applySearch());
    this.info = h('span', { class: 'search-info' });
    this.crumbs = h('span', { class: 'crumbs' });
    this.totalEl = h('span', { class: 'flame-total' });
    const modes = select([['both', 'Table + flame graph'], ['flame', 'Flame graph'], ['table', 'Table']], this.mode, (m) => this.setMode(m as 'both'), { 'aria-label': 'view mode' });
    this.bar = h('div', { class: 'flame-bar' }, this.totalEl, this.search, this.info, this.crumbs, h('span', { class: 'spacer' }), o.table !== false && modes, o.exportReq && this.exportMenu());
    this.body = h('div', { class: 'flame-body' }, state('loading', 'Loading the flame graph…'));
    this.el = h('div', { class: 'flame-view' }, this.bar, this.body);
  }

  loading(text = 'Loading the flame graph…'): void {
    replace(this.body, state('loading', text));
  }
  fail(e: unknown): void {
    replace(this.body, state('error', (e as Error).message || String(e)));
  }
  empty(text: string): void {
    replace(this.body, state('empty', text));
  }

  show(f: Flame): void {
    this.full = f;
    const unit = unitOf(this.o.profileType);
    const d = f.diff;
    this.totalEl.textContent = d ? `Baseline ${fmtValue(d.lt, unit)} · comparison ${fmtValue(d.rt, unit)}` : `Total ${fmtValue(f.total, unit)}`;
    this.totalEl.dataset.total = String(d ? d.rt : f.total);
    this.totalEl.dataset.nodes = String(f.name.length);
    this.present(f);
    if (this.o.search) this.applySearch();
    const nm = this.o.sandwich ? f.names.indexOf(this.o.sandwich) : -1;
    const at = this.o.focus ? find(f, this.o.focus.split(';')) : -1;
    if (nm >= 0) this.sandwich(nm);
    else if (at > 0) this.focusOn(at);
  }

  private present(f: Flame): void {
    this.shown = f;
    this.layout(this.flame.el, this.table.el);
    this.flame.setData(f);
    const mark = document.documentElement.dataset;
    if (!mark.firstFlameMs) mark.firstFlameMs = performance.now().toFixed(0);
    this.flame.el.dataset.drawMs = this.flame.lastDrawMs.toFixed(1);
    // the table once the flame graph is on screen (after the next frame)
    requestAnimationFrame(() =>
      setTimeout(() => {
        if (this.shown !== f) return;
        const t0 = performance.now();
        this.table.setData(f);
        if (!mark.tableMs) mark.tableMs = (performance.now() - t0).toFixed(0);
      }),
    );
    this.crumb('');
  }

  private layout(flameEl: HTMLElement, tableEl: HTMLElement): void {
    replace(
      this.body,
      h('div', { class: 'flame-split mode-' + this.mode }, this.mode !== 'flame' && h('div', { class: 'table-pane' }, tableEl), this.mode !== 'table' && h('div', { class: 'flame-pane' }, flameEl)),
    );
  }

  private setMode(m: 'both' | 'flame' | 'table'): void {
    this.mode = m;
    if (this.shown) {
      this.layout(this.flame.el, this.table.el);
      this.flame.draw();
    }
  }

  private crumb(text: string, withReset = !!text): void {
    replace(this.crumbs, text && h('span', null, text), withReset && h('button', { type: 'button', class: 'reset', onclick: () => this.reset() }, 'Reset view'));
  }

  private reset(): void {
    this.o.onState?.({ focus: null, sandwich: null });
    if (this.full && this.shown !== this.full) this.present(this.full);
    else this.flame.zoomTo(0);
    this.applySearch();
    this.crumb('');
  }

  setSearch(q: string): void {
    this.search.value = q;
    this.applySearch();
  }

  private applySearch(): void {
    const q = this.search.value;
    this.o.onSearch?.(q);
    if (!this.shown) return;
    const r = this.flame.setSearch(q);
    this.table.setFilter(q);
    this.info.textContent = q ? (r.nodes ? `${pct(r.share, 1)} of the total in ${r.nodes} matching node${r.nodes === 1 ? '' : 's'}` : 'no match') : '';
  }

  private focusOn(i: number): void {
    if (!this.shown) return;
    const name = this.flame.nameOf(i);
    const path = stack(this.shown, i);
    this.present(focus(this.shown, i));
    this.applySearch();
    this.crumb(`Focused on ${name}`, true);
    this.o.onState?.({ focus: path, sandwich: null });
  }

  private sandwich(nm: number): void {
    const f = this.full;
    if (!f) return;
    const s = sandwich(f, nm);
    const unit = unitOf(this.o.profileType);
    const callers = new FlameGraph({ unit, inverted: true });
    const callees = new FlameGraph({ unit });
    this.shown = null;
    replace(
      this.body,
      h(
        'div',
        { class: 'sandwich-view' },
        h('h3', null, `Callers of ${f.names[nm]}`, h('span', { class: 'muted' }, ' (inverted: the function at the bottom)')),
        callers.el,
        h('h3', null, `Callees of ${f.names[nm]}`),
        callees.el,
      ),
    );
    callers.setData(s.callers);
    callees.setData(s.callees);
    this.crumb(`Sandwich: ${f.names[nm]} — total ${fmtValue(s.callees.total, unit)} (${pct(s.callees.total, f.total)})`, true);
    this.o.onState?.({ focus: null, sandwich: f.names[nm] });
  }

  private exportMenu(): HTMLElement {
    const req = this.o.exportReq!;
    const status = h('span', { class: 'muted export-status' });
    const run = (what: string, f: () => Promise<string | void>) => async () => {
      status.textContent = `exporting ${what}…`;
      status.className = 'muted export-status';
      try {
        status.textContent = (await f()) || '';
      } catch (e) {
        status.textContent = (e as Error).message;
        status.className = 'error export-status';
      }
    };
    const pprof = run('pprof', async () => {
      const buf = await api.mergeProfile(req);
      const gz = new Response(new Blob([buf]).stream().pipeThrough(new CompressionStream('gzip')));
      download(`${req.name}.pb.gz`, await gz.blob());
    });
    const json = run('JSON', async () => {
      const q = new URLSearchParams({ query: req.query, from: String(req.start), until: String(req.end), format: 'json', 'max-nodes': String(req.maxNodes) });
      download(`${req.name}.json`, await api.get('/pyroscope/render?' + q));
    });
    const png = run('PNG', async () => {
      const b = await this.flame.png();
      if (b) download(`${req.name}.png`, b);
    });
    const link = run('link', async () => {
      const u = new URL(location.href);
      u.searchParams.set('from', urlTime(req.start));
      u.searchParams.set('until', urlTime(req.end));
      await navigator.clipboard.writeText(u.toString());
      return 'link copied';
    });
    return h(
      'span',
      { class: 'export' },
      'Export: ',
      h('button', { type: 'button', onclick: pprof, title: 'The merged profile as gzipped pprof (SelectMergeProfile)' }, 'pprof'),
      h('button', { type: 'button', onclick: json, title: 'Flamebearer JSON (/pyroscope/render)' }, 'JSON'),
      h('button', { type: 'button', onclick: png, title: 'The flame graph as an image' }, 'PNG'),
      h('button', { type: 'button', onclick: link, title: 'Copy a link to this view with its time range fixed' }, 'Copy link'),
      status,
    );
  }
}

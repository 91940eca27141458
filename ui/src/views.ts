// The views: single, comparison and diff, tag explorer. Each renders from the URL alone.
import * as api from './api';
import { FlameView, noProfiles, queryBar, settle, timePicker, type Ctx, type Settled } from './components';
import { h, replace, select, state } from './dom';
import { fmtValue, pct, unitOf } from './format';
import { formatQuery, parseQuery, selector, service, withMatcher, type Query } from './query';
import { COLORS, stepFor, Timeline, type Shade } from './timeline';
import { describe, fmtTime, resolve, urlTime, type Resolved } from './time';
import { decode } from './tree';
import { go, note, param } from './url';

export const MAX_NODES = 16384;
const maxNodes = () => Number(param('maxNodes')) || MAX_NODES;

function points(s: api.Series): [number, number][] {
  return (s.points || []).map((p) => [Number(p.timestamp), Number(p.value)]);
}

/// The range of a view, or an error box saying why the URL's times are not one.
function range(from: string, until: string, ctx: Ctx, root: HTMLElement): Resolved | null {
  const r = resolve(from, until, ctx.now);
  if (typeof r === 'string') {
    replace(root, timePicker(from, until, (f, u) => go({ from: f, until: u })), state('error', 'Bad time range: ' + r));
    return null;
  }
  return r;
}

async function timeline(tl: Timeline, q: Query, r: Resolved, ctx: Ctx, shades: Shade[] = [], extra?: Query): Promise<void> {
  const step = stepFor(r.start, r.end);
  const qs = extra && formatQuery(extra) !== formatQuery(q) ? [q, extra] : [q];
  tl.status('loading', 'Loading the timeline…');
  try {
    const all = await Promise.all(qs.map((x) => api.selectSeries(x.profileType, selector(x.matchers), r, step)));
    if (ctx.alive()) tl.set(all.map((s, i) => ({ color: COLORS[i], points: s.flatMap(points) })), r.start, r.end, step * 1000, shades);
  } catch (e) {
    if (ctx.alive()) tl.status('error', (e as Error).message);
  }
}

const mergeReq = (q: Query, r: Resolved): api.MergeRequest => ({ profileTypeID: q.profileType, labelSelector: selector(q.matchers), start: r.start, end: r.end, maxNodes: maxNodes() });

/// The flame graph of q over r into view (`pending`: the same query, already asked).
async function merged(view: FlameView, q: Query, r: Resolved, ctx: Ctx, pending?: Promise<api.FlameGraphJSON>): Promise<void> {
  try {
    const t0 = performance.now();
    const fg = await (pending || api.mergeStacktraces(mergeReq(q, r)));
    if (!ctx.alive()) return;
    const t1 = performance.now();
    const f = decode(fg, false);
    // how long the first flame graph took: the query (with its JSON) and the decoding
    const mark = document.documentElement.dataset;
    if (!mark.queryMs) Object.assign(mark, { queryMs: (t1 - t0).toFixed(0), decodeMs: (performance.now() - t1).toFixed(0) });
    if (!f.total) view.empty(`No ${q.profileType} profiles match ${selector(q.matchers)} between ${fmtTime(r.start)} and ${fmtTime(r.end)}. Widen the time range or remove a label filter.`);
    else view.show(f);
  } catch (e) {
    if (ctx.alive()) view.fail(e);
  }
}

/// Settles a query or shows why not (no profiles, an error); null when nothing more to draw.
async function settled(text: string, r: Resolved, ctx: Ctx, root: HTMLElement, top: HTMLElement): Promise<Settled | null> {
  replace(root, top, state('loading', 'Loading services…'));
  try {
    const s = await settle(text, r);
    if (!ctx.alive()) return null;
    if (!s) replace(root, top, noProfiles(r));
    return s;
  } catch (e) {
    if (ctx.alive()) replace(root, top, state('error', (e as Error).message));
    return null;
  }
}

/// What the single view and the tag explorer start from: the range (the last hour unless
/// the URL says otherwise), its picker, and the settled query; null when that is all to show.
async function begin(root: HTMLElement, ctx: Ctx) {
  const from = param('from') || 'now-1h';
  const until = param('until') || 'now';
  const r = range(from, until, ctx, root);
  if (!r) return null;
  const picker = timePicker(from, until, (f, u) => go({ from: f, until: u }));
  // A URL naming a whole query needs no settling first: its flame graph is asked for at once.
  const text = param('query');
  const given = parseQuery(text);
  const pending = given.profileType && service(given) ? api.mergeStacktraces(mergeReq(given, r)) : undefined;
  pending?.catch(() => {}); // handled where it is awaited, or not needed
  const s = await settled(text, r, ctx, root, h('div', { class: 'toolbar' }, picker));
  return s && { from, until, r, picker, s, q: s.q, pending: pending && formatQuery(s.q) === formatQuery(given) ? pending : undefined };
}

export async function single(root: HTMLElement, ctx: Ctx): Promise<void> {
  const b = await begin(root, ctx);
  if (!b) return;
  const { from, until, r, picker, s, q, pending } = b;
  const query = formatQuery(q);
  if (param('query') !== query) note({ query });
  const tl = new Timeline(unitOf(q.profileType), (a, b) => go({ from: urlTime(a), until: urlTime(b) }));
  const fv = new FlameView({
    profileType: q.profileType,
    search: param('search'),
    onSearch: (x) => note({ search: x }),
    focus: param('focus'),
    sandwich: param('sandwich'),
    onState: note,
    exportReq: { profileTypeID: q.profileType, labelSelector: selector(q.matchers), start: r.start, end: r.end, maxNodes: maxNodes(), query, name: s.q.matchers.find((m) => m.name === 'service_name')?.value || 'profile' },
  });
  replace(
    root,
    h('div', { class: 'toolbar' }, queryBar(s, r, (nq) => go({ query: formatQuery(nq), focus: null, sandwich: null })), picker),
    h('div', { class: 'range-title' }, describe(from, until, r)),
    tl.el,
    fv.el,
  );
  await Promise.all([timeline(tl, q, r, ctx), merged(fv, q, r, ctx, pending)]);
}

// Which side a drag on the comparison timeline sets.
let dragSide: 'left' | 'right' = 'left';

export async function compare(root: HTMLElement, ctx: Ctx, isDiff: boolean): Promise<void> {
  const from = param('from') || 'now-2h';
  const until = param('until') || 'now';
  const r = range(from, until, ctx, root);
  if (!r) return;
  const picker = timePicker(from, until, (f, u) => go({ from: f, until: u, leftFrom: null, leftUntil: null, rightFrom: null, rightUntil: null }));
  // Default sides: the first and second halves of the range (the hour before this one, and this one).
  const mid = Math.round((r.start + r.end) / 2);
  const dflt = from === 'now-2h' && until === 'now';
  const side = (k: 'left' | 'right') => {
    const f = param(k + 'From') || (dflt ? (k === 'left' ? 'now-2h' : 'now-1h') : urlTime(k === 'left' ? r.start : mid));
    const u = param(k + 'Until') || (dflt ? (k === 'left' ? 'now-1h' : 'now') : urlTime(k === 'left' ? mid : r.end));
    return { f, u, r: resolve(f, u, ctx.now) };
  };
  const L = side('left');
  const R = side('right');
  const top = h('div', { class: 'toolbar' }, picker);
  const ls = await settled(param('leftQuery') || param('query'), r, ctx, root, top);
  if (!ls) return;
  const rs = param('rightQuery') ? await settle(param('rightQuery'), r).catch(() => null) : ls;
  if (!ctx.alive()) return;
  const rq = rs ? rs.q : ls.q;
  note({ leftQuery: formatQuery(ls.q), rightQuery: formatQuery(rq) });
  const badSide = typeof L.r === 'string' ? 'Baseline: ' + L.r : typeof R.r === 'string' ? 'Comparison: ' + R.r : '';
  const lr = L.r as Resolved;
  const rr = R.r as Resolved;
  const shades: Shade[] = badSide ? [] : [
    { start: lr.start, end: lr.end, color: 'rgba(59,125,221,0.18)' },
    { start: rr.start, end: rr.end, color: 'rgba(229,72,77,0.16)' },
  ];
  const tl = new Timeline(unitOf(ls.q.profileType), (a, b) => {
    const k = dragSide;
    dragSide = k === 'left' ? 'right' : 'left';
    go({ [k + 'From']: urlTime(a), [k + 'Until']: urlTime(b) });
  }, 'Drag across the timeline to pick the baseline or comparison range');
  const sideRadio = (k: 'left' | 'right', label: string) =>
    h('label', { class: 'radio ' + k }, h('input', { type: 'radio', name: 'drag-side', checked: dragSide === k, onchange: () => (dragSide = k) }), label);
  const panel = (k: 'left' | 'right', title: string, s: Settled, t: { f: string; u: string }) =>
    h(
      'div',
      { class: 'side side-' + k },
      queryBar(s, r, (nq) => go({ [k + 'Query']: formatQuery(nq) }), title),
      timePicker(t.f, t.u, (f, u) => go({ [k + 'From']: f, [k + 'Until']: u }), 'Range'),
    );
  const views: FlameView[] = [];
  const mk = (pt: string) => {
    const v = new FlameView({ profileType: pt, table: isDiff, search: param('search'), onSearch: (x) => note({ search: x }) });
    views.push(v);
    return v;
  };
  replace(
    root,
    top,
    h('div', { class: 'drag-side' }, 'Drag on the timeline to set the ', sideRadio('left', 'baseline'), ' or the ', sideRadio('right', 'comparison'), ' range.'),
    tl.el,
    h('div', { class: 'sides' }, panel('left', 'Baseline', ls, L), panel('right', 'Comparison', rs || ls, R)),
  );
  const tlDone = timeline(tl, ls.q, r, ctx, shades, rq);
  if (badSide) {
    root.append(state('error', 'Bad time range: ' + badSide));
    return void (await tlDone);
  }
  if (isDiff) {
    const v = mk(ls.q.profileType);
    root.append(h('div', { class: 'legend' }, h('span', { class: 'swatch down' }), 'less in the comparison', h('span', { class: 'swatch up' }), 'more in the comparison (share of each side’s total)'), v.el);
    try {
      if (ls.q.profileType !== rq.profileType) throw new Error(`Diff needs one profile type on both sides (baseline ${ls.q.profileType}, comparison ${rq.profileType}).`);
      const fg = await api.diff(mergeReq(ls.q, lr), mergeReq(rq, rr));
      if (!ctx.alive()) return;
      const f = decode(fg, true);
      if (!f.diff || (!f.diff.lt && !f.diff.rt)) v.empty(`Neither range holds profiles of ${ls.q.profileType} for these queries. Drag on the timeline to pick ranges that hold data.`);
      else {
        v.show(f);
        if (!f.diff.lt) root.insertBefore(state('empty', 'The baseline range holds no profiles: everything shows as new.'), v.el);
        else if (!f.diff.rt) root.insertBefore(state('empty', 'The comparison range holds no profiles: everything shows as removed.'), v.el);
      }
    } catch (e) {
      if (ctx.alive()) v.fail(e);
    }
  } else {
    const a = mk(ls.q.profileType);
    const b = mk(rq.profileType);
    root.append(h('div', { class: 'pair' }, h('div', null, h('h3', { class: 'left' }, 'Baseline'), a.el), h('div', null, h('h3', { class: 'right' }, 'Comparison'), b.el)));
    await Promise.all([merged(a, ls.q, lr, ctx), merged(b, rq, rr, ctx)]);
  }
  await tlDone;
}

export async function explore(root: HTMLElement, ctx: Ctx): Promise<void> {
  const b = await begin(root, ctx);
  if (!b) return;
  const { from, until, r, picker, s, q } = b;
  note({ query: formatQuery(q) });
  const toolbar = h('div', { class: 'toolbar' }, queryBar(s, r, (nq) => go({ query: formatQuery(nq), groupByValue: null })), picker);
  replace(root, toolbar, state('loading', 'Loading labels…'));
  let names: string[];
  try {
    names = (await api.labelNames([selector(q.matchers)], r)).filter((n) => !n.startsWith('__') && n !== 'service_name');
  } catch (e) {
    if (ctx.alive()) replace(root, toolbar, state('error', (e as Error).message));
    return;
  }
  if (!ctx.alive()) return;
  if (!names.length) return replace(root, toolbar, state('empty', `The profiles of ${selector(q.matchers)} carry no labels besides service_name: nothing to group by.`));
  const by = names.includes(param('groupBy')) ? param('groupBy') : names[0];
  const value = param('groupByValue');
  const unit = unitOf(q.profileType);
  const tl = new Timeline(unit, (a, b) => go({ from: urlTime(a), until: urlTime(b) }));
  const tableBox = h('div', { class: 'explore-table' }, state('loading', 'Loading series…'));
  const fq = value ? withMatcher(q, { name: by, op: '=', value }) : q;
  const fv = new FlameView({ profileType: q.profileType });
  replace(
    root,
    toolbar,
    h('div', { class: 'group-by' }, h('label', null, 'Group by ', select(names.map((n) => [n, n]), by, (n) => go({ groupBy: n, groupByValue: null }), { class: 'group-by-picker', 'aria-label': 'group by' }))),
    tl.el,
    tableBox,
    h('h3', null, value ? `${by}="${value}"` : `All values of ${by}`, value && h('button', { type: 'button', onclick: () => go({ groupByValue: null }) }, 'Show all'), ' ', h('a', { href: '/?' + new URLSearchParams({ query: formatQuery(fq), from, until }) }, 'Open in single view')),
    fv.el,
  );
  const step = stepFor(r.start, r.end);
  tl.status('loading', 'Loading the timeline…');
  const series = api.selectSeries(q.profileType, selector(q.matchers), r, step, [by]).then((ss) => {
    if (!ctx.alive()) return;
    const rows = ss.map((x, i) => {
      const pts = points(x);
      const total = pts.reduce((a, p) => a + p[1], 0);
      return { value: x.labels?.find((l) => l.name === by)?.value ?? '', pts, total, color: COLORS[i % COLORS.length] };
    });
    rows.sort((a, b) => b.total - a.total);
    rows.forEach((x, i) => (x.color = COLORS[i % COLORS.length]));
    const all = rows.reduce((a, x) => a + x.total, 0);
    tl.set(rows.map((x) => ({ color: x.color, points: x.pts })), r.start, r.end, step * 1000);
    if (!rows.length) return replace(tableBox, state('empty', `No profiles match this query in the range, so no values of ${by}.`));
    replace(
      tableBox,
      h(
        'table',
        null,
        h('thead', null, h('tr', null, h('th', { class: 'name' }, by), h('th', { class: 'num' }, 'Share'), h('th', { class: 'num' }, 'Total'), h('th', { class: 'num' }, 'Average per point'))),
        h(
          'tbody',
          null,
          rows.map((x) =>
            h(
              'tr',
              { class: x.value === value ? 'selected' : '', onclick: () => go({ groupBy: by, groupByValue: x.value === value ? null : x.value }) },
              h('td', { class: 'name' }, h('span', { class: 'swatch', style: `background:${x.color}` }), x.value || '(none)'),
              h('td', { class: 'num' }, pct(x.total, all)),
              h('td', { class: 'num' }, fmtValue(x.total, unit)),
              h('td', { class: 'num' }, fmtValue(x.pts.length ? x.total / x.pts.length : 0, unit)),
            ),
          ),
        ),
      ),
    );
  });
  const failed = (e: Error) => {
    if (!ctx.alive()) return;
    replace(tableBox, state('error', e.message));
    tl.status('error', e.message);
  };
  await Promise.all([series.catch(failed), merged(fv, fq, r, ctx)]);
}


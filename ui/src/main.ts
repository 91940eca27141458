// kiln's UI: the shell (header, views' tabs, tenant) and the router.
import { setTenant } from './api';
import { flames, type Ctx } from './components';
import { h, replace } from './dom';
import { currentView, go, href, param, PATHS, setRouter, type View } from './url';
import { compare, explore, single } from './views';

const TABS: [View, string][] = [['single', 'Single view'], ['comparison', 'Comparison'], ['diff', 'Diff'], ['explore', 'Tag explorer']];

// when the script started, after the page's navigation began (the first render's share of loading)
document.documentElement.dataset.scriptMs = performance.now().toFixed(0);
let gen = 0;
const root = document.getElementById('app')!;
const nav = h('nav', { class: 'tabs' });
const tenant = h('input', { class: 'tenant', placeholder: 'anonymous', size: 10, 'aria-label': 'tenant', title: 'Sent as X-Scope-OrgID' });
tenant.addEventListener('change', () => go({ tenant: tenant.value.trim() }));
const view = h('main', { class: 'view' });
replace(root, h('header', { class: 'top' }, h('a', { class: 'brand', href: '/' }, 'kiln'), nav, h('span', { class: 'spacer' }), h('label', { class: 'tenant-label' }, 'Tenant ', tenant)), view);

/// A tab's link: the current query carried over to the other view's parameters.
function tabHref(v: View): string {
  const query = param('query') || param('leftQuery');
  const keep = { tenant: param('tenant') };
  if (v === 'comparison' || v === 'diff') {
    const same = currentView() === 'comparison' || currentView() === 'diff';
    return same ? href(PATHS[v], {}) : href(PATHS[v], { ...keep, leftQuery: query, rightQuery: query }, false);
  }
  return href(PATHS[v], { ...keep, query, from: param('from'), until: param('until') }, false);
}

function route(): void {
  const my = ++gen;
  const v = currentView();
  const t = param('tenant');
  setTenant(t);
  tenant.value = t;
  replace(nav, TABS.map(([k, label]) => h('a', { href: tabHref(k), class: k === v ? 'active' : '', 'data-nav': '' }, label)));
  document.title = `kiln · ${TABS.find(([k]) => k === v)![1]}`;
  flames.length = 0;
  const ctx: Ctx = { now: Date.now(), alive: () => my === gen };
  const el = h('div', { class: 'view-' + v });
  replace(view, el);
  const run = v === 'single' ? single(el, ctx) : v === 'explore' ? explore(el, ctx) : compare(el, ctx, v === 'diff');
  run.catch((e) => ctx.alive() && replace(el, h('div', { class: 'state error', role: 'alert' }, 'Something went wrong: ' + ((e as Error).message || e))));
}

document.addEventListener('click', (e) => {
  const a = (e.target as Element).closest?.('a[data-nav]') as HTMLAnchorElement | null;
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  history.pushState(null, '', a.getAttribute('href'));
  route();
});
window.addEventListener('popstate', route);
setRouter(route);
// For tests and the console: the flame graphs on screen.
(window as unknown as { kiln: object }).kiln = { flames };
route();

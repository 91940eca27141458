// The view's state lives in the URL (Pyroscope's parameters), so reload, back and links work.
export type View = 'single' | 'comparison' | 'diff' | 'explore';

export const PATHS: Record<View, string> = { single: '/', comparison: '/comparison', diff: '/comparison-diff', explore: '/explore' };

export function currentView(): View {
  const p = location.pathname.replace(/\/+$/, '');
  return p === '/comparison' ? 'comparison' : p === '/comparison-diff' ? 'diff' : p === '/explore' ? 'explore' : 'single';
}

export const param = (k: string) => new URLSearchParams(location.search).get(k) ?? '';

export type Changes = Record<string, string | null | undefined>;

export function href(path: string, changes: Changes, keep = true): string {
  const p = keep ? new URLSearchParams(location.search) : new URLSearchParams();
  for (const k in changes) {
    const v = changes[k];
    if (v === null || v === undefined || v === '') p.delete(k);
    else p.set(k, v);
  }
  const s = p.toString();
  return path + (s ? '?' + s : '');
}

let onRoute: () => void = () => {};
export const setRouter = (f: () => void) => (onRoute = f);

/// Changes the URL and renders the view it names (a new history entry unless `replace`).
export function go(changes: Changes, path = location.pathname, replace = false): void {
  const url = href(path, changes);
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  onRoute();
}

/// Records state that needs no new render (search text) in the URL, without a history entry.
export function note(changes: Changes): void {
  history.replaceState(null, '', href(location.pathname, changes));
}

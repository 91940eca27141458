// A tiny element builder: h('div', {class: 'x', onclick: f}, child, 'text').
type Attrs = Record<string, unknown>;
export type Child = Node | string | number | null | undefined | false | Child[];

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  // The page's fields are made from the URL: the browser must not restore older values
  // into them on back and forward.
  if (tag === 'input' || tag === 'select') el.setAttribute('autocomplete', 'off');
  if (attrs) {
    for (const k in attrs) {
      const v = attrs[k];
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v as EventListener);
      else if (k === 'value') (el as HTMLInputElement).value = String(v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
}

export function replace(el: Element, ...children: Child[]): void {
  el.textContent = '';
  append(el, children);
}

/// A status line: loading, an empty state that says why, or an error with its message.
export function state(kind: 'loading' | 'empty' | 'error', text: string): HTMLElement {
  return h('div', { class: 'state ' + kind, role: kind === 'error' ? 'alert' : 'status' }, text);
}

export function select(options: [string, string][], value: string, onchange: (v: string) => void, attrs: Attrs = {}): HTMLSelectElement {
  const s = h('select', attrs, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
  s.value = value;
  s.addEventListener('change', () => onchange(s.value));
  return s;
}

export function download(name: string, blob: Blob): void {
  const a = h('a', { href: URL.createObjectURL(blob), download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

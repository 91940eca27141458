// Drives chromium (playwright-core) against a running kiln holding the profiles that
// tests/ui.rs pushed, and checks what a person would see in each view. Run by tests/ui.rs:
// KILN_URL, CHROMIUM, SCREENSHOTS and EXPECT (JSON) come from it.
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.KILN_URL;
const shots = process.env.SCREENSHOTS;
const ex = JSON.parse(process.env.EXPECT);
const report = {};
setTimeout(() => {
  console.error('browser test: timed out after 110 s');
  process.exit(2);
}, 110_000).unref();

const q = (svc, extra = '') => `${ex.cpu}{service_name="${svc}"${extra}}`;
const url = (path, params) => base + path + '?' + new URLSearchParams(params);
function check(ok, what) {
  if (!ok) throw new Error('check failed: ' + what);
}

const profile = mkdtempSync(join(tmpdir(), 'kiln-ui-chromium-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 1000 },
  acceptDownloads: true,
});
ctx.setDefaultTimeout(15_000);
const page = ctx.pages()[0] || (await ctx.newPage());
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));

let current = '';
async function step(name, f) {
  current = name;
  const t0 = Date.now();
  await f();
  console.log(`ok  ${name} (${Date.now() - t0} ms)`);
}
const shot = (name) => page.screenshot({ path: join(shots, name + '.png'), fullPage: true });
const total = () => page.$eval('.flame-total', (e) => Number(e.dataset.total));
const waitTotal = (n) => page.waitForFunction((n) => Number(document.querySelector('.flame-total')?.dataset.total) === n, n);
const firstRow = () => page.$eval('.top-table tbody tr td.name', (td) => td.lastChild.textContent);
async function locate(name, which = 0) {
  await page.evaluate(([n, w]) => {
    const at = window.kiln.flames[w].locate(n);
    if (at && (at.y < 0 || at.y > innerHeight - 20)) window.scrollBy(0, at.y - innerHeight / 2);
  }, [name, which]);
  return page.evaluate(([n, w]) => window.kiln.flames[w].locate(n), [name, which]);
}
/// The canvas's pixel at a viewport point, [r, g, b].
const pixel = (x, y, which = 0) =>
  page.evaluate(([x, y, w]) => {
    const c = window.kiln.flames[w].canvas;
    const r = c.getBoundingClientRect();
    const d = c.width / r.width;
    return [...c.getContext('2d').getImageData(Math.floor((x - r.left) * d), Math.floor((y - r.top) * d), 1, 1).data].slice(0, 3);
  }, [x, y, which]);

try {
  await step('the single view finds the service by clicking its picker', async () => {
    await page.goto(base + '/');
    await page.waitForSelector('.service-picker');
    const services = await page.$$eval('.service-picker option', (os) => os.map((o) => o.value));
    check(services.includes('shop') && services.includes('big'), 'services in the picker: ' + services);
    await page.selectOption('.service-picker', 'shop');
    await page.waitForFunction(() => new URLSearchParams(location.search).get('query')?.includes('service_name="shop"'));
    await page.waitForSelector('.top-table tbody tr');
    check((await page.$eval('.type-picker', (s) => s.value)) === ex.cpu, 'the CPU type is picked');

  });

  await step('the hottest function tops the table and is on the canvas (hover and click)', async () => {
    const top = await firstRow();
    check(top === ex.hottest, `top row ${top}, expected ${ex.hottest}`);
    const at = await locate(ex.hottest);
    check(at && at.width > 2, 'hottest drawn: ' + JSON.stringify(at));
    const px = await pixel(at.x, at.y);
    check(px.join() !== '255,255,255' && px.join() !== '236,236,236', 'coloured pixel at the hottest function: ' + px);
    await page.mouse.move(at.x, at.y);
    await page.waitForSelector('.tooltip:not([hidden])');
    check((await page.textContent('.tooltip .tip-name')) === ex.hottest, 'tooltip names the hottest function');
    await page.mouse.click(at.x, at.y);
    await page.waitForFunction((n) => document.querySelector('.crumbs')?.textContent.includes('Zoomed to ' + n), ex.hottest);
    await shot('single');
  });

  await step('the timeline draws the profiles and tells their values on hover', async () => {
    // the first bar: the first column of the bars' blue just above the axis
    const at = await page.evaluate(() => {
      const c = document.querySelector('.timeline-canvas');
      const r = c.getBoundingClientRect();
      const d = c.width / r.width;
      const y = Math.floor((110 - 18 - 3) * d);
      const row = c.getContext('2d').getImageData(0, y, c.width, 1).data;
      for (let x = 0; x < c.width; x++) if (row[x * 4] === 0x3b && row[x * 4 + 1] === 0x7d && row[x * 4 + 2] === 0xdd) return { x: r.left + x / d + 1, y: r.top + y / d };
      return null;
    });
    check(at, 'a bar on the timeline');
    await page.mouse.move(at.x, at.y);
    await page.waitForSelector('.timeline .tooltip:not([hidden])');
    check(/\d+(\.\d+)? (ms|s|min)/.test(await page.textContent('.timeline .tooltip')), 'the bar\'s value');
    await page.mouse.move(0, 0);
  });

  await step('the label filter narrows the totals (by clicking)', async () => {
    const before = await total();
    check(before === ex.prodTotal + ex.devTotal, `total ${before}, expected ${ex.prodTotal + ex.devTotal}`);
    await page.click('.open-filter');
    await page.waitForSelector('.label-name');
    await page.selectOption('.label-name', 'env');
    await page.fill('.label-value', 'dev');
    await page.click('.add-filter');
    // The view re-renders once the URL holds the filter: wait for its chip, and say what
    // the chips read if it never comes.
    const chip = await page
      .waitForFunction(() => [...document.querySelectorAll('.chip')].some((c) => c.textContent.includes('env="dev"')))
      .then(() => true, () => false);
    check(chip, `a chip shows env="dev" (chips: ${JSON.stringify(await page.$$eval('.chip', (cs) => cs.map((c) => c.textContent)))})`);
    await waitTotal(ex.devTotal);
  });

  await step('a URL opens the same view; reload and back keep it', async () => {
    await page.goto(url('/', { query: q('shop', ',env="prod"'), from: 'now-1h', until: 'now' }));
    await waitTotal(ex.prodTotal);
    await page.reload();
    await waitTotal(ex.prodTotal);
    await page.goBack();
    await waitTotal(ex.devTotal);
    check(decodeURIComponent(page.url()).includes('env="dev"'), 'back returns to the dev filter');
    const fields = await page.$$eval('.time-picker input', (is) => is.map((i) => i.value));
    check(fields.join() === 'now-1h,now', 'the time fields after back: ' + fields);
  });

  await step('search highlights matches with their share, and filters the table', async () => {
    await page.fill('.search', ex.hottest);
    await page.waitForFunction(() => /% of the total/.test(document.querySelector('.search-info').textContent));
    const names = await page.$$eval('.top-table tbody tr td.name', (tds) => tds.map((td) => td.lastChild.textContent));
    check(names.length > 0 && names.every((n) => n.toLowerCase().includes(ex.hottest.toLowerCase())), 'table filtered: ' + names);
    check(new URL(page.url()).searchParams.get('search') === ex.hottest, 'search in the URL');
    await page.fill('.search', '');
  });

  await step('sorting the table by total', async () => {
    await page.click('.top-table th:nth-child(3) button');
    await page.waitForSelector('.top-table th:nth-child(3)[aria-sort="descending"]');
  });

  await step('sandwich view from the canvas menu', async () => {
    const at = await locate(ex.hottest);
    await page.mouse.click(at.x, at.y, { button: 'right' });
    await page.click('.menu button:has-text("Sandwich")');
    await page.waitForSelector(`h3:has-text("Callers of ${ex.hottest}")`);
    check((await page.$$('.sandwich-view canvas.flame-canvas')).length === 2, 'callers and callees drawn');
    check(new URL(page.url()).searchParams.get('sandwich') === ex.hottest, 'the sandwich in the URL');
    await page.reload();
    await page.waitForSelector(`h3:has-text("Callers of ${ex.hottest}")`);
    await shot('sandwich');
  });

  await step('focus on a subtree from the canvas menu, and back', async () => {
    await page.goto(url('/', { query: q('shop'), from: 'now-1h', until: 'now' }));
    await page.waitForSelector('.flame-canvas');
    const at = await locate(ex.hottest);
    await page.mouse.click(at.x, at.y, { button: 'right' });
    await page.click('.menu button:has-text("Focus")');
    await page.waitForFunction((n) => document.querySelector('.crumbs')?.textContent.includes('Focused on ' + n), ex.hottest);
    // the focused function is the root now: the top row of the canvas
    const root = await page.evaluate(() => {
      const f = window.kiln.flames[0];
      const r = f.canvas.getBoundingClientRect();
      return f.nameOf(f.nodeAt(r.width / 2, 5));
    });
    check(root === ex.hottest, 'focused root: ' + root);
    const focus = new URL(page.url()).searchParams.get('focus');
    check(focus && focus.endsWith(';' + ex.hottest), 'the focus in the URL: ' + focus);
    await page.reload();
    await page.waitForFunction((n) => document.querySelector('.crumbs')?.textContent.includes('Focused on ' + n), ex.hottest);
    await page.click('.crumbs .reset');
    await page.waitForFunction(() => !document.querySelector('.crumbs')?.textContent);
  });

  await step('the time range presets', async () => {
    await page.selectOption('.time-picker select', 'now-6h');
    await page.waitForFunction(() => new URLSearchParams(location.search).get('from') === 'now-6h');
    await page.waitForSelector('.flame-canvas');
    check((await page.textContent('.range-title')) === 'the last 6h', 'range title');
  });

  await step('the comparison view and the tag explorer by clicking their tabs', async () => {
    await page.click('nav a:has-text("Comparison")');
    await page.waitForFunction(() => location.pathname === '/comparison' && document.querySelectorAll('.pair .flame-canvas').length === 2);
    await page.click('nav a:has-text("Tag explorer")');
    await page.waitForSelector('.explore-table tbody tr');
    check(new URL(page.url()).pathname === '/explore' && (await page.$eval('.group-by-picker', (s) => s.value)) === 'env', 'the explorer groups by env');
    await page.click('nav a:has-text("Single view")');
    await page.waitForSelector('.top-table tbody tr');
  });

  await step('export: flamebearer JSON and pprof', async () => {
    await page.goto(url('/', { query: q('shop'), from: 'now-1h', until: 'now' }));
    await page.waitForSelector('.flame-canvas');
    const [json] = await Promise.all([page.waitForEvent('download'), page.click('.export button:has-text("JSON")')]);
    const fb = JSON.parse(readFileSync(await json.path(), 'utf8'));
    check(fb.flamebearer && fb.flamebearer.numTicks === ex.prodTotal + ex.devTotal, 'flamebearer JSON: ' + JSON.stringify(fb).slice(0, 200));
    const [pprof] = await Promise.all([page.waitForEvent('download'), page.click('.export button:has-text("pprof")')]);
    const b = readFileSync(await pprof.path());
    check(pprof.suggestedFilename() === 'shop.pb.gz' && b[0] === 0x1f && b[1] === 0x8b && b.length > 100, 'a gzipped pprof');
  });

  await step('the diff view by clicking: this hour against the last, coloured by change', async () => {
    await page.click('nav a:has-text("Diff")');
    await page.waitForSelector('.legend');
    await page.waitForSelector('.flame-canvas');
    const u = new URL(page.url());
    check(u.pathname === '/comparison-diff' && u.searchParams.get('leftQuery') === q('shop'), 'diff URL: ' + u);
    const colours = await page.evaluate(() => {
      const c = window.kiln.flames[0].canvas;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let red = 0;
      let green = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (d[i] > d[i + 1] + 40 && d[i] > d[i + 2] + 40) red++;
        if (d[i + 1] > d[i] + 40 && d[i + 1] > d[i + 2] + 20) green++;
      }
      return { red, green };
    });
    check(colours.red > 100 && colours.green > 100, 'red and green in the diff: ' + JSON.stringify(colours));
    // The table may be drawn after the canvas: wait for it rather than read it at once.
    const table = await page
      .waitForFunction(() => document.querySelector('.top-table td.up') && document.querySelector('.top-table td.down'))
      .then(() => true, () => false);
    check(table, `the table shows rises and falls (rows: ${(await page.$$('.top-table tr')).length})`);
    await shot('diff');
  });

  await step('the diff view by URL, ranges picked by dragging on the timeline', async () => {
    await page.goto(url('/comparison-diff', { leftQuery: q('shop'), rightQuery: q('shop'), from: 'now-2h', until: 'now', leftFrom: 'now-2h', leftUntil: 'now-1h', rightFrom: 'now-1h', rightUntil: 'now' }));
    await page.waitForSelector('.flame-canvas');
    const box = await (await page.$('.timeline-canvas')).boundingBox();
    await page.mouse.move(box.x + box.width * 0.05, box.y + 40);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.45, box.y + 40, { steps: 4 });
    await page.mouse.up();
    await page.waitForFunction(() => /^\d+$/.test(new URLSearchParams(location.search).get('leftFrom')));
    await page.waitForSelector('.flame-canvas');
  });

  await step('the comparison view: two flame graphs side by side', async () => {
    await page.goto(url('/comparison', { leftQuery: q('shop'), rightQuery: q('shop', ',env="dev"'), from: 'now-2h', until: 'now', leftFrom: 'now-2h', leftUntil: 'now-1h', rightFrom: 'now-1h', rightUntil: 'now' }));
    await page.waitForFunction(() => document.querySelectorAll('.pair .flame-canvas').length === 2 && document.querySelectorAll('.pair .flame-total').length === 2);
    await page.waitForFunction((n) => Number(document.querySelectorAll('.pair .flame-total')[1].dataset.total) === n, ex.devTotal);
    await shot('comparison');
  });

  await step('the tag explorer: a timeline and a share per label value', async () => {
    await page.goto(url('/explore', { query: q('shop'), groupBy: 'env', from: 'now-1h', until: 'now' }));
    await page.waitForSelector('.explore-table tbody tr');
    const rows = await page.$$eval('.explore-table tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    const share = (n) => ((100 * n) / (ex.prodTotal + ex.devTotal)).toFixed(2).replace(/\.?0+$/, '') + '%';
    check(rows[0][0] === 'prod' && rows[0][1] === share(ex.prodTotal) && rows[1][0] === 'dev' && rows[1][1] === share(ex.devTotal), 'rows: ' + JSON.stringify(rows));
    await page.click('.explore-table tbody tr:nth-child(2)');
    await page.waitForFunction(() => new URLSearchParams(location.search).get('groupByValue') === 'dev');
    await waitTotal(ex.devTotal);
    await shot('explore');
  });

  await step('errors are shown with their message; empty states say why', async () => {
    await page.goto(url('/', { query: q('shop', ',env=~"("'), from: 'now-1h', until: 'now' }));
    await page.waitForSelector('.flame-body .state.error');
    const err = await page.textContent('.flame-body .state.error');
    check(/SelectMergeStacktraces failed: .*invalid regular expression[^]*\(HTTP 400\)/.test(err), 'error message: ' + err);
    check((await page.textContent('.timeline .state.error')).startsWith('SelectSeries failed'), 'the timeline shows its error');
    await shot('error');
    await page.goto(url('/', { query: q('shop'), from: 'banana', until: 'now' }));
    check((await page.textContent('.state.error')).includes('"banana" is not a time'), 'bad time shown');
    await page.goto(url('/', { query: q('nosuchservice'), from: 'now-1h', until: 'now' }));
    await page.waitForSelector('.state.empty');
    check((await page.textContent('.flame-body .state.empty')).includes('No '), 'empty state says why');
  });

  await step('the tenant field sends X-Scope-OrgID', async () => {
    await page.goto(url('/', { query: q('shop') }));
    await page.waitForSelector('.flame-canvas');
    const sent = page.waitForRequest((r) => r.url().includes('QuerierService') && r.headers()['x-scope-orgid'] === 'team-a');
    await page.fill('.tenant', 'team-a');
    await page.press('.tenant', 'Enter');
    await sent;
    check(new URL(page.url()).searchParams.get('tenant') === 'team-a', 'tenant in the URL');
  });

  // Render times of a large profile, in a warm browser: at the default max nodes, and all of it.
  const timings = async (p) => {
    await p.waitForSelector('.flame-canvas');
    await p.waitForFunction(() => document.documentElement.dataset.firstFlameMs);
    return p.evaluate(() => {
      const d = document.documentElement.dataset;
      const t = document.querySelector('.flame-total').dataset;
      return { nodes: +t.nodes, scriptMs: +d.scriptMs, queryMs: +d.queryMs, decodeMs: +d.decodeMs, drawMs: +document.querySelector('.flame').dataset.drawMs, firstRenderMs: +d.firstFlameMs };
    });
  };
  await step('render time of a large profile, at the default max nodes', async () => {
    const p = await ctx.newPage();
    await p.goto(url('/', { query: q('big'), from: 'now-1h', until: 'now' }));
    report.defaultMaxNodes = await timings(p);
    await p.close();
  });

  await step('render time of a large profile, whole', async () => {
    const p = await ctx.newPage();
    await p.goto(url('/', { query: q('big'), maxNodes: '1000000', from: 'now-1h', until: 'now' }));
    report.whole = await timings(p);
    report.whole.hoverMs = await p.evaluate(() => {
      const c = document.querySelector('.flame-canvas');
      const r = c.getBoundingClientRect();
      const t0 = performance.now();
      for (let i = 0; i < 200; i++) c.dispatchEvent(new MouseEvent('mousemove', { clientX: r.left + (i * r.width) / 200, clientY: r.top + 9 + (i % 30) * 18, bubbles: true }));
      return +((performance.now() - t0) / 200).toFixed(2);
    });
    report.whole.zoomMs = await p.evaluate(() => {
      const f = window.kiln.flames[0];
      const t0 = performance.now();
      f.zoomTo(f.nodeAt(f.canvas.clientWidth / 2, 18 + 9));
      return Math.round(performance.now() - t0);
    });
    report.whole.searchMs = await p.evaluate(() => {
      const t0 = performance.now();
      const s = document.querySelector('.search');
      s.value = 'runtime';
      s.dispatchEvent(new Event('input'));
      return Math.round(performance.now() - t0);
    });
    await p.screenshot({ path: join(shots, 'large.png') });
    await p.close();
  });

  check(pageErrors.length === 0, 'uncaught errors in the page: ' + pageErrors.join('; '));
  console.log('RESULT ' + JSON.stringify(report));
} catch (e) {
  console.error(`FAILED at "${current}": ${e.message}`);
  await page.screenshot({ path: join(shots, 'failed.png'), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}

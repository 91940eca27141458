// Builds dist/ (committed; the kiln binary embeds it) from src/. Deterministic: the same
// sources and the same esbuild version (pinned in package-lock.json) give the same bytes,
// which CI checks by rebuilding and comparing. Fails when the bundle exceeds its budget.
import * as esbuild from 'esbuild';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// The budget, in bytes, of what a browser downloads (JS + CSS + HTML), before and after gzip.
export const BUDGET = { raw: 80 * 1024, gzip: 28 * 1024 };

const common = { bundle: true, minify: true, write: false, legalComments: 'none', charset: 'utf8', logLevel: 'warning' };
const js = await esbuild.build({
  ...common,
  entryPoints: [join(here, 'src/main.ts')],
  format: 'iife',
  target: 'es2020',
});
const css = await esbuild.build({ ...common, entryPoints: [join(here, 'src/app.css')], target: 'chrome100' });
const jsBytes = js.outputFiles[0].contents;
const cssBytes = css.outputFiles[0].contents;
const version = createHash('sha256').update(jsBytes).update(cssBytes).digest('hex').slice(0, 16);
const html = readFileSync(join(here, 'src/index.html'), 'utf8').replaceAll('{{VERSION}}', version);

const out = join(here, 'dist');
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'app.js'), jsBytes);
writeFileSync(join(out, 'app.css'), cssBytes);
writeFileSync(join(out, 'index.html'), html);

const files = [jsBytes, cssBytes, Buffer.from(html)];
const raw = files.reduce((n, b) => n + b.length, 0);
const gz = files.reduce((n, b) => n + gzipSync(b, { level: 9 }).length, 0);
const kib = (n) => (n / 1024).toFixed(1) + ' KiB';
console.log(`ui: app.js ${kib(jsBytes.length)}, app.css ${kib(cssBytes.length)}, index.html ${kib(html.length)}; total ${kib(raw)} (${kib(gz)} gzipped); budget ${kib(BUDGET.raw)} (${kib(BUDGET.gzip)} gzipped)`);
if (raw > BUDGET.raw || gz > BUDGET.gzip) {
  console.error('ui: the bundle is over its budget (ui/build.mjs BUDGET)');
  process.exit(1);
}

// Drives Debian's chromium (/usr/bin/chromium, or $CHROMIUM) with playwright-core for
// tests/browser.rs: one browser, one context and page per client (no storage shared between
// them), each page the test page of tests/browser/page.html served by the private nginx.
// playwright-core never downloads a browser; it starts the given executable.
//
// Input (env):
//   BASE       http://127.0.0.1:PORT: nginx's public server (the page and the push locations)
//   PAGES      JSON [{id, mode, priv, shared, public}]: one page per entry
//   SHOTS      directory for screenshots (target/browser)
//   CHROMIUM   the browser executable (default /usr/bin/chromium)
// Commands (stdin, one a line): `shot NAME` writes SHOTS/NAME-<id>.png for every page;
// `quit` (or the end of stdin) closes the browser and exits.
// Output (stdout): one JSON object a line: the pages' events as {page, ev, ...}, and
// {ev: 'ready'}, {ev: 'shot', path}, {ev: 'failure', what}.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const BASE = (process.env.BASE || '').replace(/\/+$/, '');
const PAGES = JSON.parse(process.env.PAGES || '[]');
const SHOTS = process.env.SHOTS || 'target/browser';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  // Root in a container: no user namespaces for the sandbox.
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const pages = [];
for (const p of PAGES) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  await page.exposeFunction('report', (obj) => emit({ page: p.id, ...obj }));
  page.on('pageerror', (e) => emit({ page: p.id, ev: 'failure', what: `page error: ${e.message}` }));
  page.on('console', (m) => {
    if (m.type() === 'error') emit({ page: p.id, ev: 'console-error', text: m.text() });
  });
  const q = new URLSearchParams({ mode: p.mode, priv: p.priv, shared: p.shared, public: p.public });
  await page.goto(`${BASE}/browser-test/page.html?${q}`);
  pages.push({ id: p.id, page });
}
emit({ ev: 'ready', browser: browser.version() });

let closing = false;
async function quit() {
  if (closing) return;
  closing = true;
  await browser.close().catch(() => {});
  process.exit(0);
}

const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const [cmd, arg] = line.trim().split(/\s+/, 2);
  if (cmd === 'shot') {
    mkdirSync(SHOTS, { recursive: true });
    for (const { id, page } of pages) {
      const path = join(SHOTS, `${arg || 'shot'}-${id}.png`);
      try {
        await page.screenshot({ path, fullPage: true });
        emit({ ev: 'shot', path });
      } catch (e) {
        emit({ ev: 'failure', what: `screenshot ${path}: ${e.message}` });
      }
    }
    emit({ ev: 'shots-done', name: arg || 'shot' });
  } else if (cmd === 'quit') {
    await quit();
  }
});
rl.on('close', quit);

// Herald demo page in real headless Chromium: two tabs, a message sent from
// one shows in both, with its event id.
//
// Usage: node two_tabs.mjs http://127.0.0.1:PORT/
// Env:   CHROMIUM=/path/to/chromium (default /usr/bin/chromium)
//        SCREENSHOT=/path/to/file.png (optional: screenshot of tab A at the end)
// Prints one line of JSON; exits 0 on success, 1 on test failure, 2 on setup error.

import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const STEP_MS = 15_000; // per wait
const TOTAL_MS = 60_000; // the whole run
const started = Date.now();

function finish(code, result) {
  console.log(JSON.stringify({ ok: code === 0, ms: Date.now() - started, ...result }));
  process.exit(code);
}

const url = process.argv[2];
if (!url || !/^https?:\/\//.test(url)) {
  finish(2, { error: 'usage: node two_tabs.mjs http://127.0.0.1:PORT/' });
}

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  finish(2, { error: `chromium not found at ${executablePath}: apt-get install chromium` });
}

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  finish(2, { error: `playwright-core is not installed: run npm ci in tests/browser (${e.message})` });
}

const userDataDir = mkdtempSync(join(tmpdir(), 'herald-chromium-'));
let context = null;
const logs = [];
const pages = [];

async function cleanup() {
  if (context) {
    const c = context;
    context = null;
    await Promise.race([c.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
  }
  rmSync(userDataDir, { recursive: true, force: true });
}

const watchdog = setTimeout(async () => {
  await cleanup();
  finish(1, { error: `timed out after ${TOTAL_MS} ms`, logs });
}, TOTAL_MS);

async function step(what, fn) {
  try {
    return await fn();
  } catch (e) {
    const err = new Error(`${what}: ${e.message.split('\n')[0]}`);
    err.step = what;
    throw err;
  }
}

try {
  context = await step('launch chromium', () =>
    chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      timeout: STEP_MS,
      viewport: { width: 900, height: 700 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-dev-shm-usage',
      ],
    }),
  );
  context.setDefaultTimeout(STEP_MS);

  const open = async (name) => {
    const page = await context.newPage();
    pages.push(page);
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') logs.push(`${name} console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => logs.push(`${name} pageerror: ${e.message}`));
    await step(`${name}: load ${url}`, () => page.goto(url, { waitUntil: 'domcontentloaded' }));
    return page;
  };
  const a = await open('tab A');
  const b = await open('tab B');

  for (const [name, page] of [['tab A', a], ['tab B', b]]) {
    await step(`${name}: wait for status connected`, () =>
      page.waitForSelector('#status[data-state="connected"]'),
    );
  }

  const message = `hello from tab A ${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  await step('tab A: type and send', async () => {
    await a.fill('#message', message);
    await a.click('#send');
  });

  const found = async (name, page) =>
    step(`${name}: wait for the message in #events`, async () => {
      const li = await page.waitForFunction(
        (m) => [...document.querySelectorAll('#events li')].find((li) => li.querySelector('.data')?.textContent === m),
        message,
      );
      return li.evaluate((el) => ({ id: el.dataset.id, text: el.textContent }));
    });
  const [inA, inB] = await Promise.all([found('tab A', a), found('tab B', b)]);

  if (!/^\d+-\d+$/.test(inA.id || '')) throw new Error(`event id missing or malformed in tab A: ${JSON.stringify(inA.id)}`);
  if (inA.id !== inB.id) throw new Error(`tabs show different ids: ${inA.id} vs ${inB.id}`);
  if (!inA.text.includes(inA.id) || !inB.text.includes(inB.id)) throw new Error('event id is not shown next to the message');
  const pubError = await a.$eval('#error', (el) => (el.hidden ? '' : el.textContent));
  if (pubError) throw new Error(`publish error shown: ${pubError}`);

  if (process.env.SCREENSHOT) await a.screenshot({ path: process.env.SCREENSHOT, fullPage: true });

  clearTimeout(watchdog);
  await cleanup();
  finish(0, { url, message, id: inA.id, tabs: 2 });
} catch (e) {
  clearTimeout(watchdog);
  const status = [];
  for (const page of pages) {
    status.push(await page.$eval('#status', (el) => `${el.dataset.state}: ${el.textContent}`, null).catch(() => null));
  }
  await cleanup();
  finish(1, { error: e.message, step: e.step, url, status, logs: logs.slice(-10) });
}

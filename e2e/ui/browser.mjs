// What every browser test shares: Debian's chromium, headless, driven by playwright-core
// (which never downloads a browser here), with a fresh profile; the page's console errors
// and failed requests are printed, and a screenshot is saved at the end, pass or fail.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// How long one expectation may take: runs and pods start in seconds on the local cluster.
export const WAIT = 90_000;

// Runs `test(page)` in a fresh browser; prints a JSON line of what it returns.
export async function withPage(screenshot, test) {
  const profile = mkdtempSync(join(tmpdir(), 'maestro-ui-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.MAESTRO_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
  let failed = false;
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(WAIT);
    page.on('console', (m) => m.type() === 'error' && console.error(`[page console] ${m.text()}`));
    page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
    try {
      const result = await test(page);
      console.log(JSON.stringify({ ok: true, ...result }));
    } catch (error) {
      failed = true;
      console.error(`[browser test] ${error.stack ?? error}`);
      console.error(`[page text] ${(await page.locator('body').innerText().catch(() => '')).slice(0, 4000)}`);
    } finally {
      await page.screenshot({ path: screenshot, fullPage: true }).catch((e) => console.error(`[screenshot] ${e}`));
    }
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(failed ? 1 : 0);
}

// The arguments after the script: name=value pairs.
export function args() {
  return Object.fromEntries(process.argv.slice(2).map((a) => {
    const at = a.indexOf('=');
    return [a.slice(0, at), a.slice(at + 1)];
  }));
}

// The next line on standard input (the Rust side says what it did).
export function nextLine() {
  return new Promise((resolve) => {
    let buffered = '';
    const onData = (chunk) => {
      buffered += chunk;
      const end = buffered.indexOf('\n');
      if (end >= 0) {
        process.stdin.off('data', onData);
        process.stdin.pause();
        resolve(buffered.slice(0, end));
      }
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', onData);
    process.stdin.resume();
  });
}

// The log's speed in the browser (a benchmark: prints figures): a run page opened on a
// run whose step printed `lines` lines, from navigation to every line drawn, three times.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, lines, screenshot } = args();
await withPage(screenshot, async (page) => {
  const times = [];
  for (let i = 0; i < 3; i++) {
    await page.goto('about:blank');
    const started = Date.now();
    await page.goto(`${url}#/runs/${namespace}/${run}`);
    await page.locator('.log-state[data-state="complete"]').waitFor();
    await page.waitForFunction((n) => document.querySelectorAll('pre.lines .line').length === n, Number(lines));
    times.push(Date.now() - started);
  }
  const linesPerSecond = times.map((ms) => Math.round(Number(lines) / (ms / 1000)));
  return { logMs: times, linesPerSecond };
});

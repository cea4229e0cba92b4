// The UI's speed, measured in the browser (a benchmark: it prints figures, asserts only
// that everything was drawn): the runs list's first render with thousands of runs, and a
// run page with a big graph. Each is measured three times, from navigation to drawn.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, runs, steps, screenshot } = args();
await withPage(screenshot, async (page) => {
  const measure = async (target, drawn) => {
    const times = [];
    for (let i = 0; i < 3; i++) {
      await page.goto('about:blank');
      const started = Date.now();
      await page.goto(target);
      await drawn();
      times.push(Date.now() - started);
    }
    return times;
  };
  const listMs = await measure(`${url}#/`, async () => {
    await page.locator('.count', { hasText: `${runs} of ${runs} runs` }).waitFor();
    await page.locator('table.runs tbody tr').first().waitFor();
  });
  const rowsDrawn = await page.locator('table.runs tbody tr').count();
  const graphMs = await measure(`${url}#/runs/${namespace}/${run}`, () =>
    page.waitForFunction((n) => document.querySelectorAll('svg.graph g.node').length === n, Number(steps)),
  );
  return { listMs, rowsDrawn, graphMs };
});

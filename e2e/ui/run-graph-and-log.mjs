// A running run's page: the graph shows every step with its phase, and the log streams
// the ticker step's lines while that step still runs; then the run ends on the page.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  const node = (step) => page.locator(`svg.graph g.node[data-step="${step}"]`);
  for (const step of ['build', 'ticker', 'report']) await node(step).waitFor();
  const line = (text) => page.locator('pre.lines .line[data-step="ticker"] .text').filter({ hasText: new RegExp(`^${text}$`) });
  await line('tick 2').waitFor();
  // Read at once, while the step is still sleeping between ticks.
  const tickerPhase = await node('ticker').getAttribute('data-phase');
  const lastTickShown = await line('tick 12').count();
  const buildPhase = await node('build').getAttribute('data-phase');
  const logState = await page.locator('.log-state').getAttribute('data-state');
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-running.png'), fullPage: true });
  await page.locator('#run-phase', { hasText: 'Succeeded' }).waitFor();
  await line('tick 12').waitFor();
  await page.locator('.log-state[data-state="complete"]').waitFor();
  const phases = {};
  for (const step of ['build', 'ticker', 'report']) phases[step] = await node(step).getAttribute('data-phase');
  await page.selectOption('select[name="log-step"]', 'build');
  const filtered = await page.locator('pre.lines .line').evaluateAll((lines) => lines.map((l) => l.getAttribute('data-step')));
  return { whileTicking: { tickerPhase, buildPhase, lastTickShown, logState }, phases, filtered };
});

// Cancel from a run's page, once its long step runs: the page says the cancel was
// requested and then shows the run Cancelled.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, step, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  await page.locator(`svg.graph g.node[data-step="${step}"][data-phase="Running"]`).waitFor();
  await page.locator('#cancel').click();
  const said = await page.locator('.actions .said').innerText();
  await page.locator('#run-phase', { hasText: 'Cancelled' }).waitFor();
  return { said, phase: await page.locator('#run-phase').innerText() };
});

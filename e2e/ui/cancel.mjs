// Cancel from a run's page, once its long step runs: the page says the cancel was
// requested and then shows the run Cancelled. Then run it again with its params.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, step, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  await page.locator(`svg.graph g.node[data-step="${step}"][data-phase="Running"]`).waitFor();
  await page.locator('#cancel').click();
  const said = await page.locator('.actions .said').innerText();
  await page.locator('#run-phase', { hasText: 'Cancelled' }).waitFor();
  const phase = await page.locator('#run-phase').innerText();
  // Run again: the page moves to the new run, which starts.
  await page.locator('#run-again').click();
  await page.waitForFunction((old) => {
    const shown = document.querySelector('section.run');
    return shown && shown.getAttribute('data-run') !== old;
  }, run);
  const again = await page.locator('section.run').getAttribute('data-run');
  await page.locator(`svg.graph g.node[data-step="${step}"][data-phase="Running"]`).waitFor();
  const user = await page.locator('#user').innerText();
  return { said, phase, again, user };
});

// Rerun from a failed run's page: the "Rerun failed steps" button starts a rerun and the
// page moves to it; the rerun names its source and ends Succeeded, and its log says where
// the reused step's log is.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  await page.locator('#run-phase', { hasText: 'Failed' }).waitFor();
  const button = await page.locator('#rerun').innerText();
  await page.locator('#rerun').click();
  await page.waitForFunction((old) => {
    const shown = document.querySelector('section.run');
    return shown && shown.getAttribute('data-run') !== old;
  }, run);
  const rerun = await page.locator('section.run').getAttribute('data-run');
  await page.locator('#run-phase', { hasText: 'Succeeded' }).waitFor({ timeout: 120000 });
  const rerunOf = await page.locator('dt', { hasText: 'Rerun of' }).locator('xpath=following-sibling::dd[1]').innerText();
  const user = await page.locator('#user').innerText();
  await page.locator('.log-state[data-state="complete"]').waitFor();
  const notes = await page.locator('pre.lines .note').allInnerTexts();
  return { button, rerun, rerunOf, user, notes };
});

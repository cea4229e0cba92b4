// The Agents page, live: the slot holding a run names it; once the run ends the slot is
// free and shows the composition it last ran (its warm cache), without a reload.
import { args, withPage } from './browser.mjs';

const { url, namespace, agent, run, composition, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/agents`);
  const article = page.locator(`article.agent[data-agent="${agent}"]`);
  await article.locator('td.slot-run', { hasText: run }).waitFor({ timeout: 120000 });
  const busy = await article.locator('[data-figure="busy"]').innerText();
  await page.evaluate(() => { window.__sameAgentsPage = true; });
  await article.locator('td.slot-composition', { hasText: composition }).waitFor({ timeout: 120000 });
  await article.locator('td.slot-run', { hasText: 'free' }).first().waitFor({ timeout: 120000 });
  const freed = await article.locator('td.slot-run').allInnerTexts();
  const misses = await article.locator('[data-figure="misses"]').innerText();
  const same = await page.evaluate(() => window.__sameAgentsPage === true);
  return { busy, freed, misses, same, namespace };
});

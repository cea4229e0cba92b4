// An ended run whose first step's pod was deleted: the log says so plainly, and still
// shows the other steps' lines.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, step, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  await page.locator('.log-state[data-state="complete"]').waitFor();
  const notes = await page.locator('pre.lines .note').allInnerTexts();
  const steps = await page.locator('pre.lines .line').evaluateAll((lines) => [...new Set(lines.map((l) => l.getAttribute('data-step')))]);
  return { notes, steps, gone: step };
});

// The gate of a waiting run, decided in the UI: approve with a comment, then report what
// the page said, and (when told to wait for it) how the page shows the decision and the
// run's end.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, step, comment, screenshot, expect } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  const gate = page.locator(`.gate[data-step="${step}"]`);
  await gate.waitFor();
  const user = await page.locator('#user').innerText();
  await gate.locator('textarea[name="comment"]').fill(comment);
  await gate.locator('button.approve').click();
  if (expect === 'refused') {
    const error = await gate.locator('.error').innerText();
    return { user, error, stillWaiting: await gate.isVisible() };
  }
  const decision = page.locator(`table.steps tr[data-step="${step}"] .decision`);
  await decision.first().waitFor();
  await page.locator('#run-phase', { hasText: 'Succeeded' }).waitFor();
  return { user, decision: await decision.first().innerText(), phase: await page.locator('#run-phase').innerText() };
});

// The gate of a waiting run, decided in the UI: approve with a comment, then report what
// the page said, and (unless the approval is expected to be refused) how the page shows
// the decision and the run's end. With $MAESTRO_UI_TOKEN, every request carries that token.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, step, comment, screenshot, expect } = args();
// From the environment, not the command line (which any local user can read).
const token = process.env.MAESTRO_UI_TOKEN;
await withPage(screenshot, async (page) => {
  let withoutToken;
  if (token) {
    // As an auth proxy in front would: every request, the event streams too, carries
    // the user's token. Without it the server refuses.
    withoutToken = (await page.request.get(`${url}/api/whoami`)).status();
    await page.context().setExtraHTTPHeaders({ 'X-Forwarded-Access-Token': token });
  }
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  const gate = page.locator(`.gate[data-step="${step}"]`);
  await gate.waitFor();
  const user = await page.locator('#user').innerText();
  await gate.locator('textarea[name="comment"]').fill(comment);
  await gate.locator('button.approve').click();
  if (expect === 'refused') {
    const error = await gate.locator('.error').innerText();
    return { user, error, stillWaiting: await gate.isVisible(), withoutToken };
  }
  const decision = page.locator(`table.steps tr[data-step="${step}"] .decision`);
  await decision.first().waitFor();
  await page.locator('#run-phase', { hasText: 'Succeeded' }).waitFor();
  return { user, decision: await decision.first().innerText(), phase: await page.locator('#run-phase').innerText() };
});

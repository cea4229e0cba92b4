// The read-only mode: a visitor who has not signed in sees the namespace's runs, with no
// approve button, and an approval sent anyway (as the page would send it) is refused.
import { args, withPage } from './browser.mjs';

const { url, namespace, run, step, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/`);
  const row = page.locator(`table.runs tr.waiting[data-run="${run}"]`);
  await row.waitFor();
  await page.locator('#read-only').waitFor();
  const approveButtons = await page.locator('button.approve').count();
  const user = await page.locator('#user').innerText();
  const grafanaLinks = await page.locator('#grafana').count();
  await page.goto(`${url}#/runs/${namespace}/${run}`);
  await page.locator(`.gate[data-step="${step}"]`).waitFor();
  const runPageButtons = await page.locator('button.approve, #cancel, #run-again').count();
  const refusal = await page.evaluate(async ({ namespace, run, step }) => {
    const response = await fetch(`/api/runs/${namespace}/${run}/decide`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-maestro-ui': '1' },
      body: JSON.stringify({ step, decision: 'Approve' }),
    });
    return { status: response.status, error: (await response.json()).error };
  }, { namespace, run, step });
  return { approveButtons, runPageButtons, user, grafanaLinks, refusal };
});

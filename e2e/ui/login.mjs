// The chart's UI without an auth proxy: the token login page, then the runs list as the
// token's user; the Run form of a composition starts a run with the typed param and opens
// it; then sign out, back to the login page. The token comes from $MAESTRO_UI_TOKEN (never
// the command line) and must land in no script-readable place.
import { args, withPage } from './browser.mjs';

const { url, run, composition, param, value, screenshot } = args();
const token = process.env.MAESTRO_UI_TOKEN;
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/`);
  await page.locator('form#login').waitFor();
  const apiWithoutToken = (await page.request.get(`${url}/api/whoami`)).status();
  await page.locator('form#login input[name="token"]').fill(token);
  await page.locator('form#login button[type="submit"]').click();
  await page.locator(`table.runs tr[data-run="${run}"]`).waitFor();
  await page.locator('#user', { hasText: 'system:' }).waitFor();
  const user = await page.locator('#user').innerText();
  const grafana = (await page.locator('#grafana').count()) ? await page.locator('#grafana').getAttribute('href') : null;
  const cookies = await page.context().cookies();
  const kept = cookies.find((c) => c.value === token);
  const stored = await page.evaluate((t) => ({
    script: document.cookie.includes(t),
    local: Object.values(localStorage).some((v) => v.includes(t)) || Object.values(sessionStorage).some((v) => v.includes(t)),
  }), token);

  // The Run form, built from the composition's params.
  await page.goto(`${url}#/compositions`);
  const form = page.locator(`form.run-form[data-composition="${composition}"]`);
  await form.waitFor();
  const fields = await form.locator('input, select').evaluateAll((all) => all.map((f) => `${f.name}${f.required ? '*' : ''}`));
  await form.locator(`[name="${param}"]`).fill(value);
  await form.locator('button.run').click();
  await page.waitForFunction((old) => {
    const shown = document.querySelector('section.run');
    return shown && shown.getAttribute('data-run') !== old;
  }, run);
  const started = await page.locator('section.run').getAttribute('data-run');
  // The run's facts (its params among them) are the first list; the graph's step labels
  // carry the class too once a step runs.
  const shownParams = await page.locator('dl.facts').first().innerText();

  await page.locator('#logout').click();
  await page.locator('form#login').waitFor();
  const afterLogout = (await page.context().cookies()).some((c) => c.value === token);
  return {
    apiWithoutToken,
    user,
    grafana,
    cookie: kept ? { name: kept.name, httpOnly: kept.httpOnly, sameSite: kept.sameSite } : null,
    stored,
    fields,
    started,
    shownParams,
    afterLogout,
  };
});

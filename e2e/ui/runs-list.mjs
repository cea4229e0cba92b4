// The runs list, opened before the runs exist: the runs the Rust side starts appear and
// change phase without a reload, and the one waiting for approval stands out with an
// approve button, which approves it.
import { args, nextLine, withPage } from './browser.mjs';

const { url, screenshot } = args();
await withPage(screenshot, async (page) => {
  await page.goto(`${url}#/`);
  await page.locator('.count[data-live="yes"]').waitFor();
  // A reload would lose this.
  await page.evaluate(() => { window.maestroTestMarker = 'same page'; });
  console.log('ready');
  const [finishing, waiting] = (await nextLine()).split(' ');
  const row = (name) => page.locator(`table.runs tr[data-run="${name}"]`);
  await row(finishing).waitFor();
  await page.locator(`table.runs tr[data-run="${finishing}"][data-phase="Succeeded"]`).waitFor();
  await page.locator(`table.runs tr.waiting[data-run="${waiting}"]`).waitFor();
  const button = await row(waiting).locator('button.approve').innerText();
  const marker = await page.evaluate(() => window.maestroTestMarker);
  const rows = await page.locator('table.runs tbody tr').count();
  // Approved from the list, the run goes on there too.
  await row(waiting).locator('button.approve').click();
  const said = await row(waiting).locator('.said').innerText();
  await page.locator(`table.runs tr[data-run="${waiting}"][data-phase="Succeeded"]`).waitFor();
  const user = await page.locator('#user').innerText();
  return { marker, button, rows, said, user };
});

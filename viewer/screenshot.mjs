// Open a vaemap HiPS viewer page in headless Chromium and save a screenshot.
//
//   node viewer/screenshot.mjs URL OUT.png [CHROMIUM]
//
// Prints one JSON line: the tiles the page fetched, console errors, the
// product it shows, the page's title and window.pwned (null unless a script
// injected through a title ran). Uses the distribution's Chromium (/usr/bin/chromium by
// default) through playwright-core, which downloads no browser of its own.
import { chromium } from "playwright-core";

const [url, out, executable = "/usr/bin/chromium"] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node viewer/screenshot.mjs URL OUT.png [CHROMIUM]");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: executable,
  headless: true,
  // swiftshader: WebGL 2 (which Aladin Lite needs) without a GPU
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
const tiles = [];
const errors = [];
page.on("requestfinished", async (request) => {
  const response = await request.response();
  // a tile of our HiPS: one of its Npix tiles, or the Allsky mosaic Aladin draws first
  if (/(Npix\d+|Allsky)\.fits$/.test(request.url()) && response && response.ok()) tiles.push(request.url());
});
page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
page.on("pageerror", (error) => errors.push(String(error)));
await page.goto(url);
await page.waitForFunction(() => window.vaemapShown !== undefined, null, { timeout: 30000 });
// Tiles arrive over a few frames: wait until some have, then let them draw.
const deadline = Date.now() + 60000;  // a loaded machine (CI) draws slowly
while (tiles.length === 0 && Date.now() < deadline) await page.waitForTimeout(250);
await page.waitForTimeout(8000);
await page.screenshot({ path: out });
const shown = await page.evaluate(() => window.vaemapShown);
// what a script injected through a title would have set (the tests check it is not)
const pwned = await page.evaluate(() => (window.pwned === undefined ? null : window.pwned));
const title = await page.title();
console.log(JSON.stringify({ tiles: tiles.length, errors, shown, pwned, title }));
await browser.close();

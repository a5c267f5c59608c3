// Load the viewer TIMES times in headless Debian Chromium, waiting each time on its loaded
// state (never a fixed delay); then read the layer panel and the drawing order, take a
// screenshot, and switch the language twice in a row without waiting.
// Prints what was seen as JSON. Usage: node load.cjs URL OUT.png TIMES
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const settled = () => window.renkeiViewer && (window.renkeiViewer.ready || window.renkeiViewer.error);

async function main() {
  const [url, out, times] = process.argv.slice(2);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "renkei-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1200, height: 800 },
    locale: "en-US", // the page's ?lang=, not the browser, chooses Japanese
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--enable-unsafe-swiftshader",
    ],
  });
  const result = { loads: [], console: [] };
  try {
    const page = browser.pages()[0] || (await browser.newPage());
    page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
    const seen = () => page.evaluate(() => ({
      ready: window.renkeiViewer.ready,
      error: window.renkeiViewer.error,
      status: document.getElementById("status").textContent,
      title: document.getElementById("title").textContent,
      layers: document.querySelectorAll("#layers li").length,
    }));
    for (let i = 0; i < Number(times); i++) {
      await page.goto(url);
      await page.waitForFunction(settled, null, { timeout: 60000 });
      result.loads.push(await seen());
    }
    Object.assign(result, await page.evaluate(() => {
      const v = window.renkeiViewer;
      const panel = document.getElementById("panel").getBoundingClientRect();
      const box = v.map.getCanvas().getBoundingClientRect();
      return {
        // the viewer's layers, bottom to top, as [type, source]
        order: v.map.getStyle().layers.filter((l) => v.layerIds.includes(l.id))
          .map((l) => [l.type, l.source]),
        panel: { right: panel.right, overflows: document.getElementById("panel").scrollWidth >
          document.getElementById("panel").clientWidth },
        items: [...document.querySelectorAll("#layers li")].map((li) => {
          const label = li.querySelector("label");
          const count = li.querySelector(".count").getBoundingClientRect();
          return {
            text: label.textContent,
            tooltip: label.title,
            cut: label.scrollWidth > label.clientWidth,
            ellipsis: getComputedStyle(label).textOverflow,
            right: Math.max(label.getBoundingClientRect().right, count.right),
            countVisible: count.width > 0 && count.right <= panel.right,
          };
        }),
        // where each drawn point is on the page, with its layer's colour
        points: v.map.queryRenderedFeatures({ layers: v.layerIds })
          .filter((f) => f.geometry.type === "Point")
          .map((f) => {
            const p = v.map.project(f.geometry.coordinates);
            return { source: f.source,
              x: box.left + p.x, y: box.top + p.y };
          }),
      };
    }));
    await page.screenshot({ path: out });
    // two language switches in a row: the page ends in the second language, loaded once
    await page.click("#lang");
    await page.click("#lang");
    await page.waitForFunction(settled, null, { timeout: 60000 });
    result.switched = await seen();
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((err) => { console.error(err); process.exit(1); });

// Load the viewer in headless Debian Chromium, wait for features to render, click one,
// save a screenshot; print what was seen as JSON. Usage: node screenshot.cjs URL OUT.png
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

async function main() {
  const [url, out] = process.argv.slice(2);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "renkei-chromium-"));
  // a fresh profile each run (Playwright passes it to Chromium as --user-data-dir)
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1200, height: 800 },
    locale: "ja-JP",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--enable-unsafe-swiftshader",
    ],
  });
  const result = { requests: [], console: [] };
  try {
    const page = browser.pages()[0] || (await browser.newPage());
    page.on("request", (r) => result.requests.push(r.url()));
    page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
    await page.goto(url);
    await page.waitForFunction(() => window.renkeiViewer && (window.renkeiViewer.ready || window.renkeiViewer.error), null, { timeout: 30000 });
    Object.assign(result, await page.evaluate(() => ({
      error: window.renkeiViewer.error,
      collections: window.renkeiViewer.collections,
      features: window.renkeiViewer.features,
      rendered: window.renkeiViewer.rendered(),
      title: document.getElementById("title").textContent,
      layers: [...document.querySelectorAll("#layers label")].map((l) => l.textContent),
    })));
    // click the first rendered point and read the popup
    const target = await page.evaluate(() => {
      const map = window.renkeiViewer.map;
      const f = map.queryRenderedFeatures({ layers: window.renkeiViewer.layerIds })
        .find((x) => x.geometry.type === "Point");
      if (!f) return null;
      const p = map.project(f.geometry.coordinates);
      const box = map.getCanvas().getBoundingClientRect();
      return { x: box.left + p.x, y: box.top + p.y };
    });
    if (target) {
      await page.mouse.click(target.x, target.y);
      await page.waitForSelector(".maplibregl-popup", { timeout: 10000 });
      result.popup = await page.textContent(".maplibregl-popup");
      await page.keyboard.press("Escape");
    }
    await page.screenshot({ path: out });
    // switch the UI to English: labels change and the data is loaded again
    await page.click("#lang");
    await page.waitForFunction(() => window.renkeiViewer.ready, null, { timeout: 30000 });
    result.english = await page.evaluate(() => ({
      title: document.getElementById("title").textContent,
      status: document.getElementById("status").textContent,
      layers: document.querySelectorAll("#layers li").length,
    }));
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((err) => { console.error(err); process.exit(1); });

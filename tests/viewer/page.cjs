// Load one page of the hub in headless Debian Chromium, wait for a selector, and print
// as JSON every request made, console messages and Content-Security-Policy violations.
// Usage: node page.cjs URL SELECTOR
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

async function main() {
  const [url, selector] = process.argv.slice(2);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "renkei-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1200, height: 800 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const result = { requests: [], console: [], violations: [], found: false };
  try {
    const page = browser.pages()[0] || (await browser.newPage());
    page.on("request", (r) => result.requests.push(r.url()));
    page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
    await page.addInitScript(() => {
      window.__violations = [];
      document.addEventListener("securitypolicyviolation", (e) =>
        window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
    const response = await page.goto(url);
    result.status = response.status();
    result.csp = response.headers()["content-security-policy"] || null;
    await page.waitForSelector(selector, { timeout: 30000 });
    result.found = true;
    result.text = (await page.textContent(selector)).slice(0, 2000);
    result.violations = await page.evaluate(() => window.__violations);
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e));
  process.exit(1);
});

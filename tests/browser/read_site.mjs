// Reads the built book as a student would, in headless Chromium (Debian's, through
// playwright-core) with the network off: only the local site server answers.
// Usage: node read_site.mjs <chromium> <base-url> <out-dir> <page.html>...
// Prints one JSON object: per page its console errors, blocked requests, math, widgets,
// explorer checks, axe-core findings, image facts and screenshots (desktop and phone).
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const [executablePath, base, outDir, ...pages] = process.argv.slice(2);
const local = new URL(base).host;

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run",
         `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1`],
});

async function open(context, page) {
  const tab = await context.newPage();
  const errors = [], blocked = [];
  tab.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  tab.on("pageerror", (e) => errors.push(String(e)));
  tab.on("response", (r) => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`); });
  await tab.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.host === local || url.protocol === "data:") return route.continue();
    blocked.push(url.href);
    return route.abort("internetdisconnected");
  });
  await tab.goto(`${base}/${page}`, { waitUntil: "load" });
  // MathJax 3 finishes typesetting; the widget manager renders after `load`.
  await tab.evaluate(async () => {
    if (window.MathJax && window.MathJax.startup) await window.MathJax.startup.promise;
  });
  await tab.waitForTimeout(500);
  return { tab, errors, blocked };
}

async function explorers(tab) {
  // Move every control of every explorer to each of its other values (one at a time, from
  // the default) and check the figure shows that value's frame.
  return await tab.evaluate(async () => {
    const results = [];
    for (const root of document.querySelectorAll(".dlmi-explorer")) {
      const data = JSON.parse(root.querySelector("script.dlmi-data").textContent);
      const img = root.querySelector("img.dlmi-frame");
      const inputs = [...root.querySelectorAll("[data-control]")];
      const r = { id: root.id, frames: Object.keys(data.frames).length, moves: 0, failures: [],
                  controls: inputs.length, labelled: 0 };
      for (const el of inputs) {
        if (el.labels && el.labels.length && el.labels[0].textContent.trim()) r.labelled++;
      }
      const keyNow = () => inputs.map((el) => {
        const c = data.controls[+el.dataset.control];
        if (el.type === "range") return c.grid[+el.value];
        if (el.tagName === "SELECT") return +el.value;
        return c.index;
      }).join(",");
      for (const el of inputs) {
        const c = data.controls[+el.dataset.control];
        if (el.readOnly || c.grid.length < 2) continue;
        const start = el.value;
        const choices = el.type === "range" ? c.grid.map((_, i) => String(i)) : c.grid.map(String);
        for (const v of choices) {
          if (v === start) continue;
          const before = img.src;
          el.value = v;
          el.dispatchEvent(new Event(el.tagName === "SELECT" ? "change" : "input", { bubbles: true }));
          const key = keyNow();
          r.moves++;
          if (img.src !== data.frames[key]) r.failures.push(`${el.id}=${v}: not frame ${key}`);
          else if (img.src === before && data.frames[key] !== before) r.failures.push(`${el.id}=${v}: unchanged`);
          if (img.alt !== data.alts[key]) r.failures.push(`${el.id}=${v}: alt not updated`);
          if (el.type === "range") {
            const shown = data.controls[+el.dataset.control].values[c.grid[+v]];
            if (el.getAttribute("aria-valuetext") !== String(shown)) r.failures.push(`${el.id}=${v}: aria-valuetext`);
          }
        }
        el.value = start;
        el.dispatchEvent(new Event(el.tagName === "SELECT" ? "change" : "input", { bubbles: true }));
      }
      results.push(r);
    }
    return results;
  });
}

const report = {};
for (const page of pages) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const { tab, errors, blocked } = await open(context, page);
  const facts = await tab.evaluate(() => {
    const main = document.querySelector("main") || document.body;
    const text = main.innerText;
    return {
      title: document.title,
      math: document.querySelectorAll("mjx-container").length,
      mathSource: document.querySelectorAll(".math").length,
      rawTex: (text.match(/\\\(|\\\[|\$\$|\\frac|\\mathbf/g) || []).length,
      widgetsExpected: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
      widgetsRendered: document.querySelectorAll(".jupyter-widgets.widget-container, .widget-hprogress, .widget-html, .jupyter-widgets .widget-inline-hbox, .lm-Widget.jupyter-widgets").length,
      images: [...main.querySelectorAll("img")].map((im) => ({
        src: im.src.startsWith("data:") ? "data:" : im.getAttribute("src"), alt: im.alt,
        natural: im.naturalWidth, rendered: Math.round(im.getBoundingClientRect().width),
        explorer: !!im.closest(".dlmi-explorer"), textPx: +(im.dataset.textPx || 0) })),
      links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
      html: document.documentElement.outerHTML.length,
    };
  });
  facts.errors = errors; facts.blocked = blocked;
  facts.explorers = await explorers(tab);
  await tab.addScriptTag({ content: axeSource });
  const axe = await tab.evaluate(async () => {
    const res = await window.axe.run(document, { resultTypes: ["violations"] });
    // Findings in the book's own content (the article) apart from the theme's (navigation, header).
    const inContent = (n) => {
      try { const el = document.querySelector(n.target[0]); return !!(el && el.closest(".bd-article")); }
      catch (e) { return false; }
    };
    return res.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
      targets: v.nodes.map((n) => n.target.join(" ")).slice(0, 8), count: v.nodes.length,
      content: v.nodes.filter(inContent).length }));
  });
  facts.axe = axe;
  const stem = page.replace(/\.html$/, "").replace(/\//g, "--");
  if (outDir) {
    await tab.screenshot({ path: path.join(outDir, `${stem}-desktop.png`), fullPage: false });
  }
  await context.close();
  // The same page on a 390 px phone: how wide each figure is drawn there.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true });
  const p = await open(phone, page);
  facts.phoneErrors = p.errors;
  facts.phoneImages = await p.tab.evaluate(() => [...document.querySelectorAll("main img")].map((im) => ({
    src: im.src.startsWith("data:") ? "data:" : im.getAttribute("src"), explorer: !!im.closest(".dlmi-explorer"),
    natural: im.naturalWidth, rendered: Math.round(im.getBoundingClientRect().width),
    textPx: +(im.dataset.textPx || 0) })));
  if (outDir) await p.tab.screenshot({ path: path.join(outDir, `${stem}-phone.png`) });
  await phone.close();
  report[page] = facts;
}
await browser.close();
process.stdout.write(JSON.stringify(report));

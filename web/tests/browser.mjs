// Drives duplex's page in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) for crates/duplex/tests/browser.rs, which starts the servers and the
// `duplex chat` process and runs this script as:
//
//   node web/tests/browser.mjs SCENARIO
//
// with DUPLEX_WEB_URL (the web listener, e.g. http://127.0.0.1:PORT/), DUPLEX_SCREENSHOTS
// (a folder for PNGs) and, for some scenarios, DUPLEX_TOKEN. The two processes meet in
// lines: this script prints `STEP name ...` on stdout when the Rust side has something to
// do, and waits for a line on stdin when it must wait for it. Every wait is bounded; any
// failed check exits 1 with what the page showed.
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join as pathJoin } from "node:path";
import { chromium } from "playwright-core";

const WAIT_MS = 20_000;
const url = process.env.DUPLEX_WEB_URL;
const screenshots = process.env.DUPLEX_SCREENSHOTS;
const scenario = process.argv[2];
if (!url || !screenshots || !scenario) {
  console.error("usage: DUPLEX_WEB_URL=… DUPLEX_SCREENSHOTS=… node browser.mjs SCENARIO");
  process.exit(2);
}
mkdirSync(screenshots, { recursive: true });

// The flags the research found working here: no sandbox (root in a container), no GPU,
// nothing that phones home.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Tells the Rust side something happened. */
function step(name, ...details) {
  process.stdout.write(`STEP ${[name, ...details].join(" ")}\n`);
}

/** Waits for the Rust side's next line (it says `go` when its part is done). */
async function waitForGo(what) {
  const timer = setTimeout(() => fail(`no word from the test while waiting for: ${what}`), WAIT_MS * 3);
  const next = await stdinLines.next();
  clearTimeout(timer);
  if (next.done || next.value.trim() !== "go") fail(`expected "go" for ${what}, got ${JSON.stringify(next.value)}`);
}

function fail(message) {
  console.error(`browser.mjs ${scenario}: ${message}`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) fail(message);
}

const pageErrors = [];

/** A fresh page (own context, so own sessionStorage) on the web listener. */
async function openPage(browser, label, viewport = { width: 900, height: 640 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (error) => pageErrors.push(`${label}: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && message.text().includes("Content Security Policy")) {
      pageErrors.push(`${label}: ${message.text()}`);
    }
  });
  await page.goto(url);
  return page;
}

/** Joins `room` as `name` by mouse-free form filling (and an optional token). */
async function join(page, name, room, token = "") {
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.fill("#token", token);
  await page.press("#room", "Enter");
  await page.waitForSelector(`#messages li.notice:has-text("joined ${room}")`);
  await page.waitForSelector("#text:not([disabled])");
}

/** Types `text` in the message box and presses Enter, as a keyboard user would. */
async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** The page's message lines: offset, sender and text, in screen order. */
async function shown(page) {
  return page.$$eval("#messages li.message", (lines) =>
    lines.map((line) => ({
      offset: line.dataset.offset,
      sender: line.dataset.sender,
      text: line.querySelector(".text")?.textContent ?? "",
    })),
  );
}

async function waitForMessage(page, sender, text) {
  await page
    .waitForSelector(`#messages li.message[data-sender="${sender}"] .text:text-is("${text}")`)
    .catch(async () => fail(`no [${sender}] ${text} on the page; it shows ${JSON.stringify(await shown(page))}`));
}

/** Offsets strictly increase down the list: no duplicate, one order. */
function checkOrder(lines, where) {
  for (let i = 1; i < lines.length; i++) {
    check(
      BigInt(lines[i].offset) > BigInt(lines[i - 1].offset),
      `${where}: offsets do not strictly increase: ${JSON.stringify(lines)}`,
    );
  }
}

const scenarios = {
  /** Two pages and a `duplex chat` process (carol) in one room: messages go all three ways. */
  async "three-way"(browser) {
    const alice = await openPage(browser, "alice");
    // Bob's page is 400 px wide and driven by the keyboard alone.
    const bob = await openPage(browser, "bob", { width: 400, height: 700 });
    await join(alice, "alice", "lobby");
    await bob.focus("#name");
    await bob.keyboard.press("Control+A");
    await bob.keyboard.type("bob");
    await bob.keyboard.press("Tab");
    await bob.keyboard.press("Control+A");
    await bob.keyboard.type("lobby");
    await bob.keyboard.press("Enter");
    await bob.waitForSelector('#messages li.notice:has-text("joined lobby")');
    await bob.waitForSelector("#text:not([disabled])");
    check(
      (await bob.evaluate(() => document.activeElement?.id)) === "text",
      "after joining, the keyboard focus is in the message box",
    );
    await bob.keyboard.type("hello from bob");
    await bob.keyboard.press("Enter");
    await say(alice, "hello from alice");
    // Presence: each page lists the others (carol joined before both).
    await alice.waitForSelector('#presence li:text-is("alice (you)")');
    await alice.waitForSelector('#presence li:text-is("bob")');
    await bob.waitForSelector('#presence li:text-is("alice")');
    await bob.waitForSelector('#presence li:text-is("carol")');
    step("pages-said-hello");
    await waitForGo("carol types in the terminal");
    for (const [page, other] of [
      [alice, "bob"],
      [bob, "alice"],
    ]) {
      await waitForMessage(page, other, `hello from ${other}`);
      await waitForMessage(page, "carol", "hello from carol");
      checkOrder(await shown(page), "three-way");
    }
    const unlabelled = await bob.$$eval("input, button", (controls) =>
      controls.filter((c) => (c.labels?.length ?? 0) === 0 && c.textContent.trim() === "").map((c) => c.id),
    );
    check(unlabelled.length === 0, `every control has a label: ${unlabelled.join(", ")}`);
    const width = await bob.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 400, `the page fits 400 px without scrolling sideways (scrollWidth ${width})`);
    await alice.screenshot({ path: pathJoin(screenshots, "chat.png") });
    await bob.screenshot({ path: pathJoin(screenshots, "chat-400px.png") });
  },

  /** A page resumes after the server restarts: every message once, in order, none missing. */
  async resume(browser) {
    const page = await openPage(browser, "reader");
    await join(page, "reader", "resume");
    for (const text of ["before 1", "before 2", "before 3"]) await say(page, text);
    await waitForMessage(page, "reader", "before 3");
    const before = await shown(page);
    const lastBefore = before[before.length - 1].offset;
    step("published", lastBefore);
    // The Rust side stops the server now.
    await page
      .waitForSelector('#connection:has-text("connection lost"), #connection:has-text("server going away")')
      .catch(() => fail("the page never said the connection was lost"));
    step("saw-disconnect");
    // ... restarts it on the same port and publishes "during 1..3" from a gRPC client.
    await waitForGo("the server restarted and others published");
    await page
      .waitForSelector(`#messages li.notice:has-text("reconnected: resumed resume after offset ${lastBefore}")`)
      .catch(async () =>
        fail(`no "reconnected: resumed resume after offset ${lastBefore}" notice; status: ${await page.textContent("#connection")}`),
      );
    await say(page, "after 1");
    await waitForMessage(page, "reader", "after 1");
    await waitForMessage(page, "writer", "during 3");
    const lines = await shown(page);
    const texts = lines.map((line) => line.text);
    const want = ["before 1", "before 2", "before 3", "during 1", "during 2", "during 3", "after 1"];
    check(JSON.stringify(texts) === JSON.stringify(want), `messages after the restart: ${JSON.stringify(lines)}`);
    checkOrder(lines, "resume");
    await page.screenshot({ path: pathJoin(screenshots, "resume.png") });
  },

  /** A token that may read but not write: joining works, publishing shows the refusal;
   *  a token the server refuses is shown and not retried. */
  async "read-only"(browser) {
    const token = process.env.DUPLEX_TOKEN ?? fail("DUPLEX_TOKEN not set");
    const page = await openPage(browser, "reader");
    await join(page, "ignored", "lobby", token);
    await say(page, "may I?");
    await page
      .waitForSelector('#errors:has-text("PERMISSION_DENIED")')
      .catch(async () => fail(`no visible PERMISSION_DENIED; errors: ${await page.textContent("#errors")}`));
    const errorText = await page.textContent("#errors");
    check(errorText.includes("publish lobby failed"), `the error names the command: ${errorText}`);
    check((await shown(page)).length === 0, "the refused message is not shown as sent");
    // The session goes on: the page still hears the room.
    step("refused");
    await waitForGo("someone with rights publishes");
    await waitForMessage(page, "writer", "still listening");
    await page.screenshot({ path: pathJoin(screenshots, "read-only.png") });
    // A token the server refuses: the page says so and stops retrying.
    const forged = await openPage(browser, "forged");
    await forged.fill("#name", "mallory");
    await forged.fill("#token", `${token.slice(0, -4)}AAAA`);
    await forged.press("#room", "Enter");
    await forged
      .waitForSelector('#errors:has-text("UNAUTHENTICATED")')
      .catch(async () => fail(`no visible UNAUTHENTICATED; errors: ${await forged.textContent("#errors")}`));
    await forged.waitForTimeout(1500);
    const status = await forged.textContent("#connection");
    check(!status.includes("reconnect attempt"), `a refused token is not retried: ${status}`);
  },

  /** The dashboard shows non-zero rates while a fan-out benchmark runs. */
  async dashboard(browser) {
    const page = await openPage(browser, "dashboard", { width: 1000, height: 560 });
    await page.goto(`${url}#dashboard`);
    await page.waitForSelector("#dashboard-view:not([hidden])");
    step("watching");
    const positive = async (metric) => {
      await page
        .waitForFunction(
          (key) => Number(document.querySelector(`figure[data-metric="${key}"] .value`)?.dataset.value ?? 0) > 0,
          metric,
          { timeout: WAIT_MS * 2 },
        )
        .catch(async () =>
          fail(`${metric} never went above 0; status: ${await page.textContent("#stats-status")}`),
        );
    };
    for (const metric of ["messages-in", "deliveries", "messages-out", "sessions"]) await positive(metric);
    // A few more ticks so the lines have a shape.
    await page.waitForTimeout(3000);
    await page.screenshot({ path: pathJoin(screenshots, "dashboard.png") });
  },
};

const run = scenarios[scenario] ?? fail(`unknown scenario ${scenario}; have ${Object.keys(scenarios).join(", ")}`);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: CHROMIUM_ARGS });
try {
  await run(browser);
} catch (error) {
  fail(error?.stack ?? String(error));
} finally {
  await browser.close();
}
check(pageErrors.length === 0, `errors in the page: ${pageErrors.join("; ")}`);
step("done");
process.exit(0);

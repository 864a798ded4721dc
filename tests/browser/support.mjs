// The support desk in Chromium: the gateway's own /dashboard and /demo pages,
// driven by playwright-core against gateways that tests/tests/browser.rs started
// (with Redis, Postgres and nginx). It passes everything in the environment:
//
//   CHATTER_URL      the pages' origin (nginx in front of the gateways)
//   GATEWAYS         JSON [{url, pid, log}] of every gateway
//   TOKENS           JSON {name: jwt}: users `user`, `user2`; agents `agent1`, `agent2`
//   SCENARIOS        comma-separated: claim, failover, expiry
//   SCREENSHOT_DIR   where failure screenshots go
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
//   DOCS_SCREENSHOT  optional: write the dashboard's screenshot there (docs/)
//
// Exit code 0 when every scenario passed.

import { chromium } from 'playwright-core';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run this through tests/tests/browser.rs)`);
  return value;
};
const base = env('CHATTER_URL');
const gateways = JSON.parse(env('GATEWAYS'));
const tokens = JSON.parse(env('TOKENS'));
const scenarios = env('SCENARIOS').split(',');
const screenshots = env('SCREENSHOT_DIR');
/** Generous: a loaded 2-core CI box runs Chromium, nginx, two gateways and the databases. */
const WAIT = 30000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
/** Every page opened, by name, for screenshots on failure. */
const pages = new Map();

async function open(name, path, token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (error) => page.problems.push(`page error: ${error.message}`));
  page.on('console', (m) => {
    // A socket or ticket request failing while a gateway restarts is expected
    // (the client retries); CSP violations and script errors are not.
    if (m.type() === 'error' && !/WebSocket connection to|Failed to load resource/.test(m.text())) {
      page.problems.push(`console: ${m.text()}`);
    }
  });
  pages.set(name, page);
  const response = await page.goto(`${base}${path}`);
  check(response.ok(), `${path} answered ${response.status()}`);
  check(
    (response.headers()['content-security-policy'] ?? '').includes("script-src 'self'"),
    `${path} has no Content-Security-Policy`,
  );
  await page.fill('#token', token);
  await page.click('#sign-in');
  await page.waitForSelector('#status[data-state="open"]', { timeout: WAIT });
  return page;
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

/** The texts of a message list, in page order. */
const texts = (page, list) =>
  page.$$eval(`${list} .msg:not(.pending) .text`, (nodes) => nodes.map((n) => n.textContent));
const seqs = (page, list) =>
  page.$$eval(`${list} .msg:not(.pending)`, (nodes) => nodes.map((n) => Number(n.dataset.seq)));

async function waitForText(page, list, text) {
  await page.waitForFunction(
    ([selector, wanted]) =>
      [...document.querySelectorAll(`${selector} .msg:not(.pending) .text`)].some((n) => n.textContent === wanted),
    [list, text],
    { timeout: WAIT },
  );
}

async function say(page, input, button, text) {
  await page.fill(input, text);
  await page.click(button);
}

/** The user asks for help on the demo page; returns the room id the agents see. */
async function askForHelp(userPage, agentPages, userId) {
  await userPage.click('#ask');
  await userPage.waitForSelector('#chat:not(.hidden)', { timeout: WAIT });
  let roomId;
  for (const agent of agentPages) {
    const item = await agent.waitForSelector(`#queue li[data-user="${userId}"]`, { timeout: WAIT });
    roomId = await item.getAttribute('data-room');
  }
  return roomId;
}

// ------------------------------------------------------------ scenarios

const state = {};

/** (a) Two agents see a request; one claims, the other sees it go; messages both ways. */
async function claim() {
  const agent1 = await open('agent1', '/dashboard', tokens.agent1);
  const agent2 = await open('agent2', '/dashboard', tokens.agent2);
  const user = await open('user', '/demo', tokens.user);
  const roomId = await askForHelp(user, [agent1, agent2], 'user');
  const waiting = await agent2.textContent(`#queue li[data-room="${roomId}"] .meta`);
  check(/waiting \d+ s/.test(waiting), `waiting time shown: ${waiting}`);

  await agent1.click(`#queue li[data-room="${roomId}"] .claim`);
  await agent2.waitForSelector(`#queue li[data-room="${roomId}"]`, { state: 'detached', timeout: WAIT });
  await agent1.waitForSelector(`#queue li[data-room="${roomId}"]`, { state: 'detached', timeout: WAIT });
  await agent1.waitForSelector(`#tabs button[data-room="${roomId}"].active`, { timeout: WAIT });
  await user.waitForFunction(() => document.querySelector('#chat-sub')?.textContent === 'is helping you', null, {
    timeout: WAIT,
  });
  check((await agent2.$$(`#tabs button[data-room="${roomId}"]`)).length === 0, 'agent2 has no tab for it');

  const chat = `.chat[data-room="${roomId}"]`;
  await say(user, '#compose', '#send', 'Hi, my order has not arrived');
  await waitForText(agent1, `${chat} .messages`, 'Hi, my order has not arrived');
  await say(agent1, `${chat} textarea.compose`, `${chat} button.send`, 'Sorry to hear that, let me check');
  await waitForText(user, '#messages', 'Sorry to hear that, let me check');
  const expected = ['Hi, my order has not arrived', 'Sorry to hear that, let me check'];
  check(JSON.stringify(await texts(user, '#messages')) === JSON.stringify(expected), 'user page: both messages once');
  check(JSON.stringify(await texts(agent1, `${chat} .messages`)) === JSON.stringify(expected), 'agent page: both once');

  // A second user waiting makes the dashboard look like a working day (and its screenshot).
  const user2 = await open('user2', '/demo', tokens.user2);
  await askForHelp(user2, [agent1, agent2], 'user2');
  if (process.env.DOCS_SCREENSHOT) {
    await agent1.screenshot({ path: process.env.DOCS_SCREENSHOT });
  }
  Object.assign(state, { agent1, agent2, user, roomId, chat, expected });
}

/** Which gateway holds `user`'s socket: the one whose log says it connected it. */
function gatewayOf(userId) {
  const holders = gateways.filter((g) =>
    readFileSync(g.log, 'utf8')
      .split('\n')
      .some((line) => line.includes('"connected"') && line.includes(`"user":"${userId}"`)),
  );
  check(holders.length === 1, `exactly one gateway connected ${userId}: ${holders.map((g) => g.url)}`);
  return holders[0];
}

/** (b) The user's gateway is stopped mid-conversation; the page carries on through the other. */
async function failover() {
  if (!state.user) await claim();
  const { agent1, user, chat, expected } = state;
  const victim = gatewayOf('user');
  // The page may be offline for less than a frame: record every state it shows.
  await user.evaluate(() => {
    const pill = document.getElementById('status');
    window.seenStates = [];
    new MutationObserver(() => window.seenStates.push(pill.dataset.state)).observe(pill, { attributes: true });
  });
  process.kill(victim.pid, 'SIGTERM');
  await user.waitForFunction(() => window.seenStates.some((s) => s !== 'open'), null, { timeout: WAIT });
  // Both sides talk while the user's page is offline: the agent's message comes
  // back through Resume, the user's waits in the outbox and is resent.
  await say(agent1, `${chat} textarea.compose`, `${chat} button.send`, 'Found it: it ships today');
  await say(user, '#compose', '#send', 'Great, thanks!');
  await user.waitForSelector('#status[data-state="open"]', { timeout: WAIT });
  const survivor = gateways.find((g) => g !== victim);
  check(
    readFileSync(survivor.log, 'utf8').split('\n').some((l) => l.includes('"connected"') && l.includes('"user":"user"')),
    'the page reconnected through the other gateway',
  );
  const all = [...expected, 'Found it: it ships today', 'Great, thanks!'];
  for (const text of all) {
    await waitForText(user, '#messages', text);
    await waitForText(agent1, `${chat} .messages`, text);
  }
  await say(agent1, `${chat} textarea.compose`, `${chat} button.send`, 'Anything else?');
  await waitForText(user, '#messages', 'Anything else?');
  all.push('Anything else?');
  // Let any late duplicate show up before counting.
  await user.waitForTimeout(500);
  const onUser = await texts(user, '#messages');
  const onAgent = await texts(agent1, `${chat} .messages`);
  check(onUser.length === all.length && all.every((t) => onUser.filter((u) => u === t).length === 1),
    `user page shows every message once: ${JSON.stringify(onUser)}`);
  check(JSON.stringify(onUser) === JSON.stringify(onAgent), `same order on both pages: ${JSON.stringify(onAgent)}`);
  const order = await seqs(user, '#messages');
  check(order.every((s, i) => i === 0 || s > order[i - 1]), `in seq order: ${order}`);
  check(onUser.indexOf('Found it: it ships today') > 1 && onUser.indexOf('Great, thanks!') > 1, 'after the earlier ones');
  check(!(await user.$('.msg.pending')), 'nothing left unconfirmed');
}

/** (c) A chat expires: both pages say so; an unanswered request leaves the queue. */
async function expiry() {
  const agent = await open('agent1', '/dashboard', tokens.agent1);
  const user = await open('user', '/demo', tokens.user);
  const waiting = await open('user2', '/demo', tokens.user2);
  const roomId = await askForHelp(user, [agent], 'user');
  await agent.click(`#queue li[data-room="${roomId}"] .claim`);
  await user.waitForFunction(() => document.querySelector('#chat-sub')?.textContent === 'is helping you', null, {
    timeout: WAIT,
  });
  const chat = `.chat[data-room="${roomId}"]`;
  await say(user, '#compose', '#send', 'Hello?');
  await waitForText(agent, `${chat} .messages`, 'Hello?');
  const unanswered = await askForHelp(waiting, [agent], 'user2');

  await agent.waitForSelector(`${chat} .banner[data-ended="expired"]`, { timeout: WAIT });
  await user.waitForSelector('#banner:not(.hidden)', { timeout: WAIT });
  check((await user.textContent('#banner')).includes('ended'), 'the user page says the chat ended');
  check(await user.isDisabled('#compose'), 'the user can no longer write');
  check(await agent.isDisabled(`${chat} textarea.compose`), 'the agent can no longer write');
  await agent.waitForSelector(`#queue li[data-room="${unanswered}"]`, { state: 'detached', timeout: WAIT });
  await waiting.waitForSelector('#banner:not(.hidden)', { timeout: WAIT });
}

const run = { claim, failover, expiry };
let failed = false;
for (const name of scenarios) {
  const started = Date.now();
  try {
    await run[name]();
    console.log(`ok: ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed = true;
    console.error(`FAILED: ${name}: ${error.stack ?? error}`);
    mkdirSync(screenshots, { recursive: true });
    for (const [pageName, page] of pages) {
      const path = join(screenshots, `${name}-${pageName}.png`);
      await page.screenshot({ path, fullPage: true }).catch(() => {});
      console.error(`  screenshot: ${path}`);
      for (const problem of page.problems) console.error(`  ${pageName}: ${problem}`);
    }
    break;
  }
}
for (const [pageName, page] of pages) {
  // CSP violations and script errors fail the run even when the checks passed.
  if (page.problems.length) {
    failed = true;
    console.error(`FAILED: ${pageName} logged errors:\n  ${page.problems.join('\n  ')}`);
  }
}
await browser.close();
process.exit(failed ? 1 : 0);

// The admin UI in headless Chromium: a responder pastes a trace ID from the access log, lands
// on the lineage page of the version that served it, checks its commit and dataset digest, and
// follows the link to the previous version and what changed. Registry values are escaped.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.MODELSTAMP_BIN;
const ART = new URL('./artifacts/', import.meta.url).pathname;
const children = [];
let browser;

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function start(args, waitFor) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${waitFor}: ${out}`)), 60000);
    const onData = (d) => {
      out += d.toString();
      const m = out.match(waitFor);
      if (m) {
        clearTimeout(timer);
        resolve({ child, match: m, out: () => out });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
  });
}

async function json(url) {
  const r = await fetch(url);
  assert.equal(r.status, 200, url);
  return r.json();
}

before(async () => {
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill('SIGTERM');
});

test('from a trace ID in the access log to the lineage page, the previous version and its diff', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'modelstamp-ui-'));
  const log = join(dir, 'access.log');
  const demo = await start(['demo', '--keep-running', '--requests', '300', '--access-log', log],
    /admin:\s+(http:\/\/127\.0\.0\.1:\d+)\/metrics/);
  const admin = demo.match[1];
  const lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const served = lines.find((l) => l.version === '2' && l.status === 200 && l.trace_id);
  assert.ok(served, 'a request served by version 2');
  const record = (await json(`${admin}/lineage/${served.lineage_id}`)).record;

  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(`${admin}/ui/`);
  assert.match(await page.title(), /models/);
  assert.ok(await page.getByRole('link', { name: 'canary comparison' }).isVisible());
  await page.screenshot({ path: join(ART, 'home.png'), fullPage: true });

  await page.fill('#lookup', served.trace_id);
  await Promise.all([page.waitForURL(/\/ui\/lineage\/ln_/), page.click('header form button')]);
  assert.ok(page.url().includes(`/ui/lineage/${served.lineage_id}`), page.url());
  assert.equal((await page.textContent('#commit')).trim(), record.code.commit);
  assert.equal((await page.textContent('#digest')).trim(), record.training_data.digest);
  assert.ok(await page.locator('#lineage-graph').isVisible(), 'the lineage graph');
  const graph = await page.textContent('#lineage-graph');
  for (const t of record.training_data.upstream_tables) assert.ok(graph.includes(t), `graph shows ${t}`);
  assert.ok(graph.includes(`digest ${record.training_data.digest}`));
  assert.ok(graph.includes('route churn'));
  await page.screenshot({ path: join(ART, 'lineage-v2.png'), fullPage: true });

  const diff = await page.textContent('#diff');
  assert.ok(diff.includes('training_data.digest') && diff.includes('e5d39153') && diff.includes('9a41c07e'), diff);
  await Promise.all([page.waitForURL(/\/ui\/lineage\/ln_/), page.click('#previous')]);
  assert.equal((await page.textContent('#digest')).trim(), 'e5d39153', 'version 1 was trained on the October data');
  assert.match(await page.textContent('h1'), /churn version 1/);
  await page.screenshot({ path: join(ART, 'lineage-v1.png'), fullPage: true });

  // A request ID works too; an unknown ID says so.
  await page.goto(`${admin}/ui/lookup?q=${served.request_id}`);
  assert.ok(page.url().includes(`/ui/lineage/${served.lineage_id}`));
  const missing = await page.goto(`${admin}/ui/lookup?q=ffffffffffffffffffffffffffffffff`);
  assert.equal(missing.status(), 404);

  await page.goto(`${admin}/ui/canary/churn`);
  assert.match(await page.textContent('#verdict'), /promote|hold|rollback/);
  await page.screenshot({ path: join(ART, 'canary.png'), fullPage: true });
  await page.goto(`${admin}/ui/audit`);
  assert.match(await page.textContent('#chain'), /memory|intact/);
  await page.close();
});

test('registry values are escaped: a <script> in a record never runs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'modelstamp-ui-xss-'));
  writeFileSync(join(dir, 'registry.yaml'), `
models:
  churn:
    aliases: { champion: "1" }
    versions:
      "1":
        code: { commit: "97f447d" }
        training_data: { name: "<img src=x onerror=window.__xss=2>", digest: e5d39153, upstream_tables: ["<script>window.__xss=3</script>"] }
        promotion: { by: "mallory", reason: "<script>window.__xss=1</script>" }
`);
  const [port, admin] = [await freePort(), await freePort()];
  writeFileSync(join(dir, 'm.toml'), `
[server]
listen = "127.0.0.1:${port}"
[admin]
listen = "127.0.0.1:${admin}"
[access_log]
target = "off"
[registry]
path = "registry.yaml"
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:1"
serves = "@champion"
`);
  await start(['run', '--config', join(dir, 'm.toml')], /modelstamp started/);
  const base = `http://127.0.0.1:${admin}`;
  const versions = await json(`${base}/versions`);
  const id = versions.models[0].versions[0].lineage_id;
  const page = await browser.newPage();
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  await page.goto(`${base}/ui/lineage/${id}`);
  assert.equal(await page.evaluate(() => window.__xss), undefined, 'no injected script ran');
  assert.equal(await page.locator('script').count(), 0, 'the page has no script element');
  assert.equal(await page.locator('main img').count(), 0, 'no injected element');
  assert.ok((await page.textContent('#promoted')).includes('<script>window.__xss=1</script>'), 'shown as text');
  assert.deepEqual(dialogs, []);
  await page.screenshot({ path: join(ART, 'escaped.png'), fullPage: true });
  await page.close();
});

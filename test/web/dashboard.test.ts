/**
 * The dashboard end to end (issue 10): a real `ferry serve` with two datastores and a disk of
 * known data, the page in headless Chromium (Debian's, driven by playwright-core), and a guest
 * writing over NBD throughout. From the page: a migration is started with the form and seen to
 * finish live; the charts got samples (copy rate and guest IOPS above zero); a slow job's speed
 * is changed and it is cancelled. After each move the disk is read back over NBD and compared
 * with every write the guest had acknowledged. A screenshot is kept as an artifact.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';
import { NbdClient } from '../../src/nbd/index.js';
import { type ServeProcess, startServe } from '../cli/ferry-process.js';
import { api } from '../cli/live-serve.js';
import { makeTempDir } from '../host/temp-dir.js';
import { assertSameBytes } from '../migrate/harness.js';
import { MiB, toolTest } from '../nbd/interop-helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox', // the test may run as root, where Chromium's sandbox refuses to start
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const DISK_BYTES = 32 * MiB;
const BLOCK_BYTES = 4096;
/** The page waits on events; these bound a wait that would otherwise hang the test. */
const WAIT_MS = 60_000;
const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/**
 * A guest: one NBD connection writing 4 KiB blocks of random data at random offsets, one at a
 * time, and a model of the disk that takes each write once the server acknowledged it (FUA).
 */
class Guest {
  readonly model: Buffer;
  writes = 0;
  private isStopping = false;
  private readonly loop: Promise<void>;

  constructor(
    private readonly client: NbdClient,
    initial: Buffer,
  ) {
    this.model = Buffer.from(initial);
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const blocks = this.model.length / BLOCK_BYTES;
    while (!this.isStopping) {
      const offset = Math.floor(Math.random() * blocks) * BLOCK_BYTES;
      const data = randomBytes(BLOCK_BYTES);
      await this.client.write(offset, data, { fua: true });
      data.copy(this.model, offset);
      this.writes += 1;
      // A guest that leaves the loop room to serve the page and the copy.
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  }

  async stop(): Promise<void> {
    this.isStopping = true;
    await this.loop;
  }
}

async function checkDisk(serve: ServeProcess, model: Buffer, what: string): Promise<void> {
  const reader = await NbdClient.connect({
    exportName: 'vm1',
    host: '127.0.0.1',
    port: serve.ready.nbdPort,
  });
  try {
    assertSameBytes(await reader.read(0, DISK_BYTES), model, what);
  } finally {
    await reader.close();
  }
}

/** The id of the job row that appears on the page besides the `previous` ones. */
async function newJobId(page: Page, previous: readonly string[]): Promise<string> {
  const others = previous.map((id) => `:not([data-job="${id}"])`).join('');
  const row = page.locator(`#jobs tr[data-job]${others}`);
  await row.waitFor({ timeout: WAIT_MS });
  const id = await row.getAttribute('data-job');
  assert.ok(id !== null);
  return id;
}

async function waitJobState(
  serve: ServeProcess,
  page: Page,
  id: string,
  state: string,
): Promise<void> {
  try {
    await page.locator(`#jobs tr[data-job="${id}"][data-state="${state}"]`).waitFor({
      timeout: WAIT_MS,
    });
  } catch (error) {
    // What the page and the API said, so a failure can be told apart: page or server.
    const row = await page.locator(`#jobs tr[data-job="${id}"]`).textContent();
    const notice = await page.locator('#notice').textContent();
    const job = await api<object>(serve, 'GET', `/v1/jobs/${id}`);
    throw new Error(
      `job ${id} did not show ${state}: row "${row}", notice "${notice}", API ${JSON.stringify(job)}`,
      { cause: error },
    );
  }
}

async function chartValue(page: Page, chart: string, field: 'points' | 'peak'): Promise<number> {
  const value = await page.locator(`svg[data-chart="${chart}"]`).getAttribute(`data-${field}`);
  return Number(value);
}

async function startFromForm(page: Page, datastore: string, speed: string): Promise<void> {
  const form = page.locator('#migrate-form');
  await form.locator('select[name="disk"]').selectOption('vm1');
  // The destinations list follows the chosen disk (its own datastore is not offered).
  await form.locator(`select[name="datastore"] option[value="${datastore}"]`).waitFor({
    state: 'attached',
    timeout: WAIT_MS,
  });
  await form.locator('select[name="datastore"]').selectOption(datastore);
  await form.locator('select[name="method"]').selectOption('mirror');
  await form.locator('input[name="speed"]').fill(speed);
  await form.locator('button[type="submit"]').click();
}

async function saveScreenshot(page: Page): Promise<void> {
  const directory = resolve(process.env.FERRY_ARTIFACTS_DIR ?? join(REPO_ROOT, 'artifacts'));
  await mkdir(directory, { recursive: true });
  const path = join(directory, 'dashboard.png');
  await page.screenshot({ path, fullPage: true });
  console.log(`dashboard screenshot: ${path}`);
}

toolTest('dashboard: migrate, watch, re-speed and cancel from the page', ['chromium'], async () => {
  const dataDir = await makeTempDir();
  const fast = join(dataDir, 'fast');
  await mkdir(fast, { recursive: true });
  const serve = await startServe([
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
  ]);
  let browser: Browser | undefined;
  let guest: Guest | undefined;
  let client: NbdClient | undefined;
  try {
    await api(serve, 'POST', '/v1/datastores', { name: 'fast', path: fast });
    await api(serve, 'POST', '/v1/disks', { name: 'vm1', size: DISK_BYTES });
    client = await NbdClient.connect({
      exportName: 'vm1',
      host: '127.0.0.1',
      port: serve.ready.nbdPort,
    });
    const initial = randomBytes(DISK_BYTES);
    await client.write(0, initial, { fua: true });
    guest = new Guest(client, initial);

    // launch() gives the browser a fresh temporary profile (user data dir) and removes it.
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const pageErrors: string[] = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    // Routes a Ferry without some feature answers 404, which the page takes as "not here".
    const optional = new Set(['/v1/clusters']);
    page.on('response', (response) => {
      const path = new URL(response.url()).pathname;
      if (response.status() >= 400 && !optional.has(path)) {
        pageErrors.push(`${response.status()} ${response.request().method()} ${path}`);
      }
    });
    // `/` redirects to the dashboard.
    await page.goto(`${serve.ready.apiUrl}/`);
    assert.equal(new URL(page.url()).pathname, '/ui/');
    await page.locator('#disks tr[data-disk="vm1"]').waitFor({ timeout: WAIT_MS });
    await page.locator('#live.good').waitFor({ timeout: WAIT_MS });

    // 1. A migration from the form, followed live to its end. 16M/s: about two seconds of
    // copying, during which the guest keeps writing.
    await startFromForm(page, 'fast', '16M');
    const first = await newJobId(page, []);
    await waitJobState(serve, page, first, 'succeeded');
    const moved = await api<{ datastore: string }>(serve, 'GET', '/v1/disks/vm1');
    assert.equal(moved.datastore, 'fast');
    // The page shows the disk on its new datastore once it has re-read the inventory.
    await page
      .locator('#disks tr[data-disk="vm1"] td:nth-child(2)', { hasText: 'fast' })
      .waitFor({ timeout: WAIT_MS });
    assert.ok((await chartValue(page, 'copy-rate', 'points')) > 0, 'copy rate chart has samples');
    assert.ok(
      (await chartValue(page, 'copy-rate', 'peak')) > 0,
      'a copy rate above zero was drawn',
    );
    assert.ok(
      (await chartValue(page, 'dirty-bytes', 'points')) > 0,
      'dirty bytes chart has samples',
    );
    assert.ok((await chartValue(page, 'guest-iops', 'peak')) > 0, 'the guest writes were drawn');
    const writesAfterFirst = guest.writes;
    assert.ok(writesAfterFirst > 0, 'the guest wrote during the move');

    // 2. A slow job back to local: its speed changed from the page, then cancelled there.
    await startFromForm(page, 'local', '512K');
    const second = await newJobId(page, [first]);
    await waitJobState(serve, page, second, 'running');
    const row = page.locator(`#jobs tr[data-job="${second}"]`);
    await row.locator('input[name="speed"]').fill('1M');
    await row.locator('button[data-action="speed"]').click();
    await row.locator('.speed-text', { hasText: '1.00 MiB/s' }).waitFor({ timeout: WAIT_MS });
    const respeeded = await api<{ speedBytesPerSecond: number }>(
      serve,
      'GET',
      `/v1/jobs/${second}`,
    );
    assert.equal(respeeded.speedBytesPerSecond, MiB);
    // The artifact: the page with a finished job, a running one, and the charts of both.
    await saveScreenshot(page);
    await row.locator('button[data-action="cancel"]').click();
    await waitJobState(serve, page, second, 'cancelled');
    const stayed = await api<{ datastore: string }>(serve, 'GET', '/v1/disks/vm1');
    assert.equal(stayed.datastore, 'fast');

    await guest.stop();
    assert.ok(guest.writes > writesAfterFirst, 'the guest kept writing through the second job');
    await checkDisk(serve, guest.model, 'vm1 after a move and a cancelled move');
    assert.deepEqual(pageErrors, [], 'the page logged no errors');
  } finally {
    await guest?.stop().catch(() => undefined);
    await client?.close().catch(() => undefined);
    await browser?.close();
    serve.child.kill('SIGTERM');
    await serve.exited;
  }
});

toolTest(
  'dashboard: a token given as ?token= is sent as Bearer and on the event streams',
  ['chromium'],
  async () => {
    const dataDir = await makeTempDir();
    const serve = await startServe([
      '--data',
      dataDir,
      '--nbd',
      '127.0.0.1:0',
      '--api',
      '127.0.0.1:0',
    ]);
    let browser: Browser | undefined;
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
      const page = await browser.newPage();
      const token = 'ferry-test-token';
      const bearer: string[] = [];
      const streams: string[] = [];
      const without: string[] = [];
      // What the page sends is checked here; the header is then taken off, so the loopback
      // server answers as it does without tokens (their checking is the API's own tests').
      await page.route('**/v1/**', async (route) => {
        const request = route.request();
        const url = new URL(request.url());
        const { authorization, ...headers } = request.headers();
        if (url.pathname.endsWith('/events')) {
          if (url.searchParams.get('token') === token) streams.push(url.pathname);
        } else if (authorization === `Bearer ${token}`) {
          bearer.push(url.pathname);
        } else {
          without.push(`${request.method()} ${url.pathname}`);
        }
        url.searchParams.delete('token');
        await route.continue({ url: url.href, headers });
      });
      await page.goto(`${serve.ready.apiUrl}/?token=${token}`);
      await page.locator('#live.good').waitFor({ timeout: WAIT_MS });
      await page.locator('#host-name', { hasText: 'v' }).waitFor({ timeout: WAIT_MS });
      assert.ok(bearer.includes('/v1/health') && bearer.includes('/v1/disks'), bearer.join(' '));
      assert.deepEqual([...new Set(streams)].sort(), ['/v1/events', '/v1/stats/events']);
      assert.deepEqual(without, [], 'every API call carried the token');
      // Out of the address bar (bookmarks, screenshots), kept for this tab.
      assert.equal(new URL(page.url()).search, '');
      assert.equal(await page.evaluate(() => sessionStorage.getItem('ferry-token')), token);
    } finally {
      await browser?.close();
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
  },
);

/**
 * Queued jobs, clusters and maintenance mode on the page, from a real `ferry serve` with a host
 * limit of 1: a slow move runs, a second waits and says why, a cluster shows its members and
 * thresholds, and maintenance entered and left from the page reaches the API.
 */
toolTest(
  'dashboard: a queued job says what it waits for; clusters; maintenance entered and left from the page',
  ['chromium'],
  async () => {
    const dataDir = await makeTempDir();
    const serve = await startServe([
      '--data',
      dataDir,
      '--nbd',
      '127.0.0.1:0',
      '--api',
      '127.0.0.1:0',
      '--max-host-migrations',
      '1',
    ]);
    let browser: Browser | undefined;
    try {
      for (const name of ['fast', 'spare']) {
        const path = join(dataDir, name);
        await mkdir(path, { recursive: true });
        await api(serve, 'POST', '/v1/datastores', { name, path });
      }
      await api(serve, 'POST', '/v1/clusters', {
        name: 'gold',
        datastores: ['local', 'fast', 'spare'],
      });
      // Data, so that the throttled copy has something to read: an empty thin disk moves at once.
      for (const disk of ['vm1', 'vm2']) {
        await api(serve, 'POST', '/v1/disks', { name: disk, size: 4 * MiB });
        const client = await NbdClient.connect({
          exportName: disk,
          host: '127.0.0.1',
          port: serve.ready.nbdPort,
        });
        await client.write(0, randomBytes(4 * MiB));
        await client.close();
      }
      const running = await api<{ id: string; state: string }>(serve, 'POST', '/v1/migrations', {
        disk: 'vm1',
        datastore: 'fast',
        speed: '64K',
      });
      const queued = await api<{ id: string; state: string }>(serve, 'POST', '/v1/migrations', {
        disk: 'vm2',
        datastore: 'fast',
      });
      assert.deepEqual([running.state, queued.state], ['running', 'queued']);

      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      await page.goto(`${serve.ready.apiUrl}/ui/`);
      const row = page.locator(`#jobs tr[data-job="${queued.id}"][data-state="queued"]`);
      await row
        .locator('[data-field="queue"]', {
          hasText: '#1 in queue — waiting for host limit: 1 of 1 migrations running on this host',
        })
        .waitFor({ timeout: WAIT_MS });
      assert.ok(await row.locator('button[data-action="cancel"]').isVisible());
      assert.ok(await row.locator('button[data-action="speed"]').isVisible());

      const clusters = page.locator('#clusters-section');
      await clusters.locator('td', { hasText: 'local, fast, spare' }).waitFor({ timeout: WAIT_MS });
      const clusterRow = await clusters.locator('tbody tr').textContent();
      for (const part of ['gold', 'space 80%, latency 15 ms']) {
        assert.ok(clusterRow?.includes(part), `${part} in "${clusterRow}"`);
      }
      const spareRow = page.locator('#datastores tr[data-datastore="spare"]');
      assert.equal(await spareRow.locator('td').nth(1).textContent(), 'gold');

      // Nothing is on `spare`: maintenance is on at once, and the form no longer offers it.
      await spareRow.locator('button[data-action="enter-maintenance"]').click();
      await spareRow.locator('.badge', { hasText: 'on' }).waitFor({ timeout: WAIT_MS });
      const datastores = await api<{ datastores: { name: string; maintenance: string }[] }>(
        serve,
        'GET',
        '/v1/datastores',
      );
      assert.equal(datastores.datastores.find((d) => d.name === 'spare')?.maintenance, 'on');
      const option = page.locator('#migrate-form select[name="datastore"] option[value="spare"]');
      assert.equal(await option.getAttribute('disabled'), '');
      await spareRow.locator('button[data-action="exit-maintenance"]').click();
      await spareRow
        .locator('button[data-action="enter-maintenance"]')
        .waitFor({ timeout: WAIT_MS });
      const after = await api<{ datastores: { name: string; maintenance: string }[] }>(
        serve,
        'GET',
        '/v1/datastores',
      );
      assert.equal(after.datastores.find((d) => d.name === 'spare')?.maintenance, 'off');

      // Cancelled from the page while queued; the running one too, and both disks stay.
      await row.locator('button[data-action="cancel"]').click();
      await page
        .locator(`#jobs tr[data-job="${queued.id}"][data-state="cancelled"]`)
        .waitFor({ timeout: WAIT_MS });
      await api(serve, 'POST', `/v1/jobs/${running.id}/cancel`);
    } finally {
      await browser?.close();
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
  },
);

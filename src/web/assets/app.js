import { ApiError, call, getOptional, openEvents } from './api.js';
import { LineChart } from './chart.js';
import { h } from './dom.js';
import { formatBytes, formatNumber, formatRate } from './format.js';
import { JobTable, TERMINAL_STATES } from './jobs.js';
import { renderClusters, renderDatastores, renderDisks, renderHosts, renderVms } from './views.js';

/**
 * The dashboard: the inventory read from the API (every few seconds, and at once when a job
 * ends, since a finished move changes where a disk lives), jobs kept live by the job event
 * stream (`/v1/events`), and per-disk rates and datastore space by the stats stream
 * (`/v1/stats/events`, one sample a second), which also clocks the charts.
 */
const INVENTORY_REFRESH_MS = 5_000;

/**
 * Every JobEvent type (control/job-record.ts); EventSource delivers only the types it listens
 * to. The scheduler's queue moves without events of its own, so while a job is queued the job
 * list is re-read with the inventory (see loadInventory).
 */
const JOB_EVENT_TYPES = [
  'created',
  'queued',
  'started',
  'resumed',
  'state',
  'phase',
  'pass',
  'mode',
  'method',
  'message',
  'speed',
  'switchover',
  'rollback',
  'offload',
  'cost',
  'progress',
];

const $ = (id) => document.getElementById(id);

const state = {
  health: null,
  disks: [],
  datastores: [],
  jobs: new Map(),
  stats: { disks: new Map(), datastores: new Map() },
  streamsOpen: { jobs: false, stats: false },
};

function notify(text, isError = false) {
  const notice = $('notice');
  notice.textContent = text;
  notice.className = `notice ${isError ? 'error' : 'info'}`;
  notice.hidden = false;
}

function describeError(error) {
  return error instanceof ApiError ? `${error.message} (${error.code})` : String(error);
}

// --- inventory ---

let refreshing = null;

async function refreshInventory() {
  // One refresh at a time; a request while one runs joins it.
  refreshing ??= loadInventory().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function loadInventory() {
  const [health, hosts, datastores, clusters, disks, vms] = await Promise.all([
    call('GET', '/v1/health'),
    getOptional('/v1/hosts'),
    call('GET', '/v1/datastores'),
    getOptional('/v1/clusters'),
    call('GET', '/v1/disks'),
    getOptional('/v1/vms'),
  ]);
  state.health = health;
  state.datastores = datastores.datastores;
  state.disks = disks.disks;
  $('host-name').textContent = `${health.host} · v${health.version}`;
  document.title = `Ferry · ${health.host}`;
  renderHosts($('hosts'), health, hosts?.hosts ?? null);
  renderClusters($('clusters-section'), $('clusters'), clusters?.clusters ?? null);
  renderVms($('vms'), vms?.vms ?? []);
  renderLive();
  fillMigrateForm();
  if ([...state.jobs.values()].some((job) => job.state === 'queued')) await loadJobs();
}

/** The whole job list: at the start, after a reconnect, and while jobs wait in the queue. */
async function loadJobs() {
  const { jobs } = await call('GET', '/v1/jobs');
  for (const job of [...jobs].sort((a, b) => a.createdAt.localeCompare(b.createdAt))) showJob(job);
}

/** The tables that the stats stream changes. */
function renderLive() {
  renderDatastores($('datastores'), state.datastores, state.stats, setMaintenance);
  renderDisks($('disks'), state.disks, state.stats);
}

// --- actions ---

async function act(what, request) {
  try {
    const result = await request();
    notify(what);
    return result;
  } catch (error) {
    notify(describeError(error), true);
    return undefined;
  }
}

async function setMaintenance(datastore, isEntering) {
  await act(
    isEntering
      ? `datastore ${datastore} is entering maintenance mode`
      : `datastore ${datastore} left maintenance mode`,
    () =>
      call(
        isEntering ? 'POST' : 'DELETE',
        `/v1/datastores/${encodeURIComponent(datastore)}/maintenance`,
      ),
  );
  await refreshInventory();
}

const jobTable = new JobTable($('jobs'), {
  onCancel: (id) =>
    act(`cancelling job ${id}: the disk goes back to its source`, async () =>
      showJob(await call('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`)),
    ),
  onSpeed: (id, speed, done) => {
    if (speed === '') return notify('type a speed first: e.g. 100M, or 0 for unlimited', true);
    return act(`job ${id}: speed set to ${speed}`, async () => {
      showJob(await call('POST', `/v1/jobs/${encodeURIComponent(id)}/speed`, { speed }));
      done();
    });
  },
});

/** How far along its lifecycle a state is (control/job-states.ts): a job never goes back. */
const STATE_RANK = {
  queued: 0,
  running: 1,
  switching: 2,
  cancelling: 2,
  succeeded: 3,
  failed: 3,
  cancelled: 3,
};

/**
 * A status older than the one shown: an action's reply and the event stream race, and the
 * reply to a cancel (`cancelling`) may land after the stream's `cancelled`. A job's state only
 * moves forward, and within a state its done bytes never go back.
 */
function isStale(job, shown) {
  if (shown === undefined) return false;
  const rank = STATE_RANK[job.state] ?? 1;
  const shownRank = STATE_RANK[shown.state] ?? 1;
  if (rank !== shownRank) return rank < shownRank;
  return job.progress.doneBytes < shown.progress.doneBytes;
}

function showJob(job) {
  const before = state.jobs.get(job.id);
  if (isStale(job, before)) return;
  state.jobs.set(job.id, job);
  jobTable.update(job);
  // A move that just ended changed where its disks live.
  if (
    TERMINAL_STATES.has(job.state) &&
    before !== undefined &&
    !TERMINAL_STATES.has(before.state)
  ) {
    void refreshInventory().catch((error) => notify(describeError(error), true));
  }
}

function fillMigrateForm() {
  const form = $('migrate-form');
  const diskSelect = form.elements.disk;
  const storeSelect = form.elements.datastore;
  const chosenDisk = diskSelect.value;
  const chosenStore = storeSelect.value;
  diskSelect.replaceChildren(
    ...state.disks
      .filter((disk) => disk.host === null)
      .map((disk) =>
        h(
          'option',
          { value: disk.name },
          `${disk.name} (${disk.datastore}, ${formatBytes(disk.sizeBytes)})`,
        ),
      ),
  );
  if (state.disks.some((disk) => disk.name === chosenDisk)) diskSelect.value = chosenDisk;
  const source = state.disks.find((disk) => disk.name === diskSelect.value)?.datastore;
  storeSelect.replaceChildren(
    ...state.datastores
      .filter((datastore) => datastore.name !== source)
      .map((datastore) =>
        h(
          'option',
          {
            value: datastore.name,
            disabled: datastore.maintenance !== undefined && datastore.maintenance !== 'off',
          },
          `${datastore.name} (${formatBytes(datastore.freeBytes)} free)`,
        ),
      ),
  );
  if ([...storeSelect.options].some((option) => option.value === chosenStore))
    storeSelect.value = chosenStore;
}

async function startMigration(event) {
  event.preventDefault();
  const form = event.target;
  const body = { disk: form.elements.disk.value, datastore: form.elements.datastore.value };
  if (form.elements.method.value !== '') body.method = form.elements.method.value;
  const speed = form.elements.speed.value.trim();
  if (speed !== '') body.speed = speed;
  const job = await act(`migration of ${body.disk} to ${body.datastore} started`, () =>
    call('POST', '/v1/migrations', body),
  );
  if (job !== undefined) showJob(job);
}

// --- live streams ---

function setLive(stream, isOpen) {
  state.streamsOpen[stream] = isOpen;
  const badge = $('live');
  const isLive = state.streamsOpen.jobs && state.streamsOpen.stats;
  badge.textContent = isLive ? 'live' : 'reconnecting…';
  badge.className = `badge ${isLive ? 'good' : 'off'}`;
}

function followJobs() {
  const source = openEvents('/v1/events');
  source.addEventListener('open', async () => {
    setLive('jobs', true);
    // Whatever happened while the stream was down: the list is the current state.
    try {
      await loadJobs();
    } catch (error) {
      notify(describeError(error), true);
    }
  });
  source.addEventListener('error', () => setLive('jobs', false));
  for (const type of JOB_EVENT_TYPES) {
    source.addEventListener(type, (message) => showJob(JSON.parse(message.data).job));
  }
}

function createCharts() {
  const container = $('charts');
  return {
    copy: new LineChart(container, {
      id: 'copy-rate',
      title: 'Copy rate',
      series: [{ name: 'all jobs', color: 'var(--blue)' }],
      format: formatRate,
      base: 1024,
    }),
    dirty: new LineChart(container, {
      id: 'dirty-bytes',
      title: 'Dirty bytes',
      series: [{ name: 'to copy', color: 'var(--orange)' }],
      format: formatBytes,
      base: 1024,
    }),
    iops: new LineChart(container, {
      id: 'guest-iops',
      title: 'Guest IOPS',
      series: [
        { name: 'read', color: 'var(--green)' },
        { name: 'write', color: 'var(--purple)' },
      ],
      format: (value) => formatNumber(value, value < 10 ? 1 : 0),
    }),
  };
}

function followStats(charts) {
  const source = openEvents('/v1/stats/events');
  source.addEventListener('open', () => setLive('stats', true));
  source.addEventListener('error', () => setLive('stats', false));
  source.addEventListener('stats', (message) => {
    const sample = JSON.parse(message.data);
    state.stats = {
      disks: new Map(sample.disks.map((disk) => [disk.name, disk])),
      datastores: new Map(sample.datastores.map((datastore) => [datastore.name, datastore])),
    };
    renderLive();
    // The charts sample the jobs once a second too, on the stats stream's clock.
    let rate = 0;
    let dirty = 0;
    for (const job of state.jobs.values()) {
      if (TERMINAL_STATES.has(job.state)) continue;
      rate += job.progress.rateBytesPerSecond;
      dirty += job.dirtyBytes;
    }
    charts.copy.push([rate]);
    charts.dirty.push([dirty]);
    let reads = 0;
    let writes = 0;
    for (const disk of sample.disks) {
      reads += disk.readIops;
      writes += disk.writeIops;
    }
    charts.iops.push([reads, writes]);
  });
}

$('migrate-form').addEventListener('submit', startMigration);
$('migrate-form').elements.disk.addEventListener('change', fillMigrateForm);
followJobs();
followStats(createCharts());
refreshInventory().catch((error) => notify(describeError(error), true));
setInterval(() => {
  refreshInventory().catch((error) => notify(describeError(error), true));
}, INVENTORY_REFRESH_MS);

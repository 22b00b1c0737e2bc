import { fillRows, h, meter } from './dom.js';
import { formatBytes, formatMs, formatNumber, formatRate } from './format.js';

/**
 * The inventory tables, each redrawn whole from what the API returned and the latest live
 * stats sample (`stats`: { disks: Map(name → rates), datastores: Map(name → space) }).
 */

export function renderHosts(tbody, health, hosts) {
  const rows = [];
  if (health !== null) {
    rows.push(
      h(
        'tr',
        {},
        h('td', {}, h('strong', {}, health.host), ' ', h('span', { class: 'tag' }, 'this host')),
        h('td', {}, window.location.host),
        h('td', {}, health.version),
        h(
          'td',
          {},
          statusBadge(
            true,
            health.warnings.length === 0 ? 'ok' : `${health.warnings.length} warnings`,
          ),
        ),
      ),
    );
  }
  for (const peer of hosts ?? []) {
    rows.push(
      h(
        'tr',
        {},
        h('td', {}, peer.name),
        h('td', {}, peer.url),
        h('td', {}, peer.version ?? '—'),
        h(
          'td',
          { title: peer.error ?? '' },
          statusBadge(
            peer.reachable && peer.error === null,
            peer.reachable ? (peer.error ?? 'ok') : 'unreachable',
          ),
        ),
      ),
    );
  }
  fillRows(tbody, rows, 4, 'no hosts');
}

function statusBadge(isGood, text) {
  return h('span', { class: `badge ${isGood ? 'good' : 'bad'}` }, text);
}

/** Mean latency of a datastore's disks over the last second, weighted by their IOPS. */
function datastoreLatencyMs(name, stats) {
  let weight = 0;
  let sum = 0;
  for (const disk of stats.disks.values()) {
    if (disk.datastore !== name || disk.latencyMs === null) continue;
    const iops = disk.readIops + disk.writeIops;
    weight += iops;
    sum += disk.latencyMs * iops;
  }
  return weight === 0 ? null : sum / weight;
}

export function renderDatastores(tbody, datastores, stats, onMaintenance) {
  const rows = datastores.map((datastore) => {
    const live = stats.datastores.get(datastore.name);
    const capacity = live?.capacityBytes ?? datastore.capacityBytes;
    const used =
      live?.usedBytes ??
      (datastore.capacityBytes === null ? null : datastore.capacityBytes - datastore.freeBytes);
    const space =
      capacity === null || used === null
        ? h('span', { class: 'badge bad' }, 'unavailable')
        : meter(used / capacity, `${formatBytes(used)} of ${formatBytes(capacity)}`);
    return h(
      'tr',
      { 'data-datastore': datastore.name },
      h(
        'td',
        {},
        h('strong', {}, datastore.name),
        h('div', { class: 'muted small' }, datastore.path),
      ),
      h('td', {}, datastore.cluster ?? '—'),
      h('td', {}, space),
      h('td', { class: 'num' }, datastore.diskCount),
      h('td', { class: 'num' }, formatMs(datastoreLatencyMs(datastore.name, stats))),
      h('td', {}, maintenanceCell(datastore, onMaintenance)),
    );
  });
  fillRows(tbody, rows, 6, 'no datastores: add one with ferry datastore add');
}

/** Only a Ferry with maintenance mode (contract 3) reports `maintenance`; without it, nothing. */
function maintenanceCell(datastore, onMaintenance) {
  if (datastore.maintenance === undefined) return '—';
  const isOff = datastore.maintenance === 'off';
  return h(
    'span',
    { class: 'actions' },
    isOff ? null : h('span', { class: 'badge warn' }, datastore.maintenance),
    h(
      'button',
      {
        type: 'button',
        class: 'small',
        'data-action': isOff ? 'enter-maintenance' : 'exit-maintenance',
        onclick: () => onMaintenance(datastore.name, isOff),
      },
      isOff ? 'Enter maintenance' : 'Exit maintenance',
    ),
  );
}

export function renderClusters(section, tbody, clusters) {
  section.hidden = clusters === null;
  if (clusters === null) return;
  const rows = clusters.map((cluster) =>
    h(
      'tr',
      {},
      h('td', {}, h('strong', {}, cluster.name)),
      h('td', {}, cluster.datastores.join(', ')),
      h(
        'td',
        {},
        cluster.capacityBytes > 0
          ? meter(
              cluster.usedBytes / cluster.capacityBytes,
              `${formatBytes(cluster.usedBytes)} of ${formatBytes(cluster.capacityBytes)}`,
            )
          : '—',
      ),
      h('td', { class: 'num' }, formatMs(cluster.latencyMs)),
      h(
        'td',
        {},
        `space ${Math.round(cluster.spaceThreshold * 100)}%, latency ${cluster.latencyThresholdMs} ms`,
      ),
      h(
        'td',
        {},
        `${cluster.automation}${cluster.automation === 'automatic' ? ` every ${cluster.intervalSeconds} s` : ''}`,
      ),
    ),
  );
  fillRows(tbody, rows, 6, 'no clusters: create one with ferry cluster create');
}

export function renderDisks(tbody, disks, stats) {
  const rows = disks.map((disk) => {
    const live = stats.disks.get(disk.name);
    return h(
      'tr',
      { 'data-disk': disk.name },
      h(
        'td',
        {},
        h('strong', {}, disk.name),
        disk.host === null ? null : h('span', { class: 'tag' }, `on ${disk.host}`),
      ),
      h('td', {}, disk.datastore),
      h('td', { class: 'num' }, formatBytes(disk.sizeBytes)),
      h('td', { class: 'num' }, formatBytes(disk.allocatedBytes)),
      h('td', { class: 'num', 'data-field': 'readIops' }, formatNumber(live?.readIops, 1)),
      h('td', { class: 'num', 'data-field': 'writeIops' }, formatNumber(live?.writeIops, 1)),
      h('td', { class: 'num' }, live === undefined ? '—' : formatRate(live.readBytesPerSecond)),
      h('td', { class: 'num' }, live === undefined ? '—' : formatRate(live.writeBytesPerSecond)),
      h('td', { class: 'num' }, formatMs(live?.latencyMs)),
    );
  });
  fillRows(tbody, rows, 9, 'no disks: create one with ferry disk create');
}

export function renderVms(tbody, vms) {
  const rows = vms.map((vm) =>
    h(
      'tr',
      {},
      h('td', {}, h('strong', {}, vm.name)),
      h(
        'td',
        {},
        h('span', { class: `badge ${vm.state === 'running' ? 'good' : 'neutral'}` }, vm.state),
      ),
      h('td', {}, vm.datastore),
      h('td', {}, vm.disks.join(', ')),
      h('td', { class: 'num' }, formatBytes(vm.sizeBytes)),
      h('td', { class: 'num' }, formatBytes(vm.memoryBytes)),
      h('td', { class: 'num' }, vm.cpus),
    ),
  );
  fillRows(tbody, rows, 7, 'no VMs');
}

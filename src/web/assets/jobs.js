import { h } from './dom.js';
import { formatBytes, formatRate, formatSeconds, formatSpeed } from './format.js';

/**
 * The jobs table, one row per job keyed by its id, updated in place on every event: a row is
 * built once and its cells rewritten, so a speed being typed into a running job's row survives
 * the four progress events a second.
 */
export const TERMINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);

/** Rows kept; older finished jobs drop off the bottom (the API keeps the history). */
const ROWS_MAX = 100;

export class JobTable {
  constructor(tbody, { onCancel, onSpeed }) {
    this.tbody = tbody;
    this.onCancel = onCancel;
    this.onSpeed = onSpeed;
    this.rows = new Map();
    this.empty = h(
      'tr',
      { class: 'empty' },
      h('td', { colspan: 9 }, 'no jobs yet: start a migration below'),
    );
    this.tbody.replaceChildren(this.empty);
  }

  /** Shows `job` (a JobStatus), adding its row on top if it is new. */
  update(job) {
    let row = this.rows.get(job.id);
    if (row === undefined) {
      row = this.createRow(job);
      this.rows.set(job.id, row);
      this.empty.remove();
      this.tbody.prepend(row.element);
      this.trim();
    }
    this.fill(row, job);
  }

  createRow(job) {
    const cell = (className = '') => h('td', { class: className });
    const cells = {
      id: cell('mono'),
      disk: cell(),
      move: cell(),
      state: cell(),
      progress: cell('progress-cell'),
      rate: cell('num'),
      dirty: cell('num'),
      speed: cell(),
      actions: cell(),
    };
    const speedInput = h('input', {
      name: 'speed',
      class: 'speed-input',
      placeholder: 'e.g. 100M',
      autocomplete: 'off',
      'aria-label': `new speed of job ${job.id}`,
    });
    const speedForm = h(
      'form',
      {
        class: 'speed-form',
        onsubmit: (event) => {
          event.preventDefault();
          this.onSpeed(job.id, speedInput.value.trim(), () => {
            speedInput.value = '';
          });
        },
      },
      speedInput,
      h('button', { type: 'submit', class: 'small', 'data-action': 'speed' }, 'Set'),
    );
    const speedText = h('span', { class: 'speed-text' });
    cells.speed.append(speedText, speedForm);
    const cancel = h(
      'button',
      {
        type: 'button',
        class: 'small danger',
        'data-action': 'cancel',
        onclick: () => this.onCancel(job.id),
      },
      'Cancel',
    );
    // The flex box goes inside the cell: a cell that is itself a flex box leaves the table.
    cells.actions.append(h('span', { class: 'actions' }, cancel));
    const element = h('tr', { 'data-job': job.id }, ...Object.values(cells));
    return { element, cells, speedText, speedForm, cancel };
  }

  fill(row, job) {
    const { cells } = row;
    row.element.dataset.state = job.state;
    cells.id.textContent = job.id;
    cells.id.title = `created ${job.createdAt}`;
    // Another host's job whose disk this host receives carries `runsOn` (api/routes/jobs.ts).
    cells.disk.replaceChildren(
      job.vm === null
        ? job.disk
        : h('span', {}, `VM ${job.vm}`, h('div', { class: 'muted small' }, job.disks.join(', '))),
      job.runsOn === undefined ? '' : h('span', { class: 'tag' }, ` on ${job.runsOn}`),
    );
    cells.move.replaceChildren(
      `${job.from} → ${job.to}`,
      h(
        'div',
        { class: 'muted small' },
        job.method === job.requestedMethod
          ? job.method
          : `${job.method} (asked ${job.requestedMethod})`,
      ),
    );
    cells.state.replaceChildren(stateBadge(job), ...queueNote(job), ...phaseNote(job));
    cells.progress.replaceChildren(progressBar(job));
    const isActive = !TERMINAL_STATES.has(job.state);
    cells.rate.textContent = isActive ? formatRate(job.progress.rateBytesPerSecond) : '—';
    cells.dirty.textContent = isActive ? formatBytes(job.dirtyBytes) : '—';
    row.speedText.textContent = formatSpeed(job.speedBytesPerSecond);
    row.speedForm.hidden = !job.allowed.includes('speed');
    row.cancel.hidden = !job.allowed.includes('cancel');
  }

  trim() {
    while (this.rows.size > ROWS_MAX) {
      const oldest = this.tbody.lastElementChild;
      if (oldest === null) return;
      this.rows.delete(oldest.dataset.job);
      oldest.remove();
    }
  }
}

function stateBadge(job) {
  const tone =
    job.state === 'succeeded'
      ? 'good'
      : job.state === 'failed'
        ? 'bad'
        : job.state === 'cancelled' || job.state === 'queued'
          ? 'neutral'
          : 'busy';
  const badge = h('span', { class: `badge ${tone}`, 'data-field': 'state' }, job.state);
  if (job.error !== null) badge.title = job.error.message;
  return badge;
}

/** A queued job's place and what it waits for (contract 1), when the API reports them. */
function queueNote(job) {
  if (job.queue === undefined || job.queue === null) return [];
  return [
    h(
      'div',
      { class: 'muted small', 'data-field': 'queue' },
      `#${job.queue.position} in queue — waiting for ${job.queue.waitingFor}`,
    ),
  ];
}

function phaseNote(job) {
  const parts = [];
  if (job.phase !== null && !TERMINAL_STATES.has(job.state)) parts.push(job.phase);
  if (job.pass > 0) parts.push(`pass ${job.pass}`);
  if (job.downtimeMs !== null) parts.push(`downtime ${job.downtimeMs} ms`);
  if (job.error !== null) parts.push(job.error.message);
  return parts.length === 0 ? [] : [h('div', { class: 'muted small' }, parts.join(' · '))];
}

/** Done out of a total that may grow: the bar shows the fraction of the total known now. */
function progressBar(job) {
  const { doneBytes, totalBytes, etaSeconds } = job.progress;
  const fraction = job.state === 'succeeded' ? 1 : totalBytes === 0 ? 0 : doneBytes / totalBytes;
  const fill = h('span', { class: 'progress-fill' });
  fill.style.width = `${(Math.min(1, fraction) * 100).toFixed(1)}%`;
  const grown =
    totalBytes > job.sizeBytes ? ` (total grew from ${formatBytes(job.sizeBytes)})` : '';
  const eta =
    TERMINAL_STATES.has(job.state) || etaSeconds === null
      ? ''
      : ` · ${formatSeconds(etaSeconds)} left`;
  return h(
    'div',
    { class: `progress ${job.state}` },
    h('span', { class: 'bar' }, fill),
    h(
      'span',
      { class: 'small', 'data-field': 'progress' },
      `${Math.floor(fraction * 100)}% · ${formatBytes(doneBytes)} of ${formatBytes(totalBytes)}${grown}${eta}`,
    ),
  );
}

// Helpers shared by the pages: polling that stops with the page, enum lists, and formats.

import { api } from '../api.js';
import { h } from '../dom.js';

export const ACTION_STATUSES = [
  'ACTION_STATUS_PENDING', 'ACTION_STATUS_DELIVERED', 'ACTION_STATUS_ACCEPTED',
  'ACTION_STATUS_COMPLETED', 'ACTION_STATUS_REJECTED', 'ACTION_STATUS_FAILED',
  'ACTION_STATUS_EXPIRED', 'ACTION_STATUS_AWAITING_APPROVAL',
];
export const POLICY_STATES = [
  'POLICY_STATE_PROPOSED', 'POLICY_STATE_DRY_RUN', 'POLICY_STATE_ENFORCED', 'POLICY_STATE_REVOKED',
];
export const TASK_STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

/**
 * Runs `tick` now and every `ms` while the page is shown, never two at once (a slow API does
 * not pile calls up). Returns a function that stops it.
 */
export function poll(tick, ms) {
  let stopped = false;
  let timer = null;
  async function loop() {
    if (stopped) return;
    try {
      await tick();
    } finally {
      if (!stopped) timer = setTimeout(loop, ms);
    }
  }
  loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** A link to a page of the console. */
export function link(hash, text, testid) {
  return h('a', { href: hash, testid }, text);
}

/** Seconds as "1 h 5 min", for durations the API gives in seconds. */
export function seconds(value) {
  const total = Number(value || 0);
  if (!total) return '—';
  const parts = [];
  const units = [['d', 86400], ['h', 3600], ['min', 60], ['s', 1]];
  let rest = total;
  for (const [name, size] of units) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)} ${name}`);
      rest %= size;
    }
  }
  return parts.join(' ');
}

/** A `datetime-local` input's value (the browser's zone) to a Date, or null. */
export function localInputToDate(value) {
  if (!value) return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/**
 * The pages of a list route, read one after another: `load(true)` reads the first page again,
 * `load(false)` the next one, and each resolves with every row read so far. `more` (the "More"
 * button) is hidden on the last page. `query()` gives the route's filters at each load.
 */
export function pager(path, key, query, more) {
  let rows = [];
  let pageToken = '';
  return async function load(reset) {
    if (reset) pageToken = '';
    const result = await api('GET', path, { query: { ...query(), page_token: pageToken } });
    rows = (reset ? [] : rows).concat(result[key] || []);
    pageToken = result.next_page_token || '';
    more.hidden = !pageToken;
    return rows;
  };
}

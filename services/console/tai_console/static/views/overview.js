// Overview: a summary refreshed every 5 s — signals in the last minute, actions by status,
// per-service status, errors (failed tasks, actions expired or failed), actions awaiting
// approval, active silences, tasks by status and policies by state. All from the API, so it
// works without Prometheus.

import { api } from '../api.js';
import { badge, enumLabel, h, replace, showError, table, timeEl } from '../dom.js';
import { ACTION_STATUSES, POLICY_STATES, link, poll } from './common.js';

const COUNT_PAGE = 1000; // the API's largest page: counts above it show as "1000+"
const MAX_SERVICES = 12; // GetStatus calls per refresh

export function render(main) {
  const updated = h('p', { class: 'muted', testid: 'overview-updated', 'aria-live': 'off' });
  const cards = {
    signals: card('Signals per minute', 'overview-signals'),
    actions: card('Actions by status', 'overview-actions'),
    errors: card('Errors', 'overview-errors'),
    services: card('Services', 'overview-services'),
    approvals: card('Awaiting approval', 'overview-approvals'),
    silences: card('Active silences', 'overview-silences'),
    tasks: card('Tasks', 'overview-tasks'),
    policies: card('Policies by state', 'overview-policies'),
  };
  main.append(h('h1', {}, 'Overview'), updated,
    h('div', { class: 'cards' }, Object.values(cards).map((c) => c.el)));

  async function refresh() {
    const policiesResult = await load(cards.policies, () => api('GET', '/v1/policies', { query: { page_size: COUNT_PAGE } }),
      (r) => countTable(POLICY_STATES, r.policies.map((p) => p.state), 'POLICY_STATE_', r.next_page_token, 'overview-policies'));
    const actionsResult = await load(cards.actions, () => api('GET', '/v1/actions', { query: { page_size: COUNT_PAGE } }),
      (r) => [countTable(ACTION_STATUSES, r.actions.map((a) => a.status), 'ACTION_STATUS_', r.next_page_token, 'overview-actions'),
        h('p', { class: 'hint' }, `Counted over the latest ${COUNT_PAGE} actions at most.`)]);
    await load(cards.approvals,
      () => api('GET', '/v1/actions', { query: { status: 'ACTION_STATUS_AWAITING_APPROVAL', page_size: 100 } }),
      (r) => [h('p', { class: 'big', testid: 'overview-approvals-count' }, countText(r.actions.length, r.next_page_token)),
        table([
          { title: 'Action', cell: (a) => link('#/actions', a.id) },
          { title: 'Target', cell: (a) => a.target_service },
          { title: 'Until', cell: (a) => timeEl(a.approval_deadline_ns) },
        ], r.actions.slice(0, 5), { testid: 'overview-approvals-table', empty: 'None.' })]);
    await load(cards.silences, () => api('GET', '/v1/silences', { query: { page_size: 100 } }),
      (r) => {
        const active = r.silences.filter((s) => s.state === 'SILENCE_STATE_ACTIVE');
        return [h('p', { class: 'big', testid: 'overview-silences-count' }, String(active.length)),
          table([
            { title: 'Comment', cell: (s) => s.comment },
            { title: 'Ends', cell: (s) => timeEl(s.ends_at_ns) },
          ], active.slice(0, 5), { testid: 'overview-silences-table', empty: 'None.' })];
      });
    await load(cards.tasks, async () => {
      const counts = {};
      for (const status of ['pending', 'running', 'failed']) {
        const r = await api('GET', '/v1/tasks', { query: { status, page_size: COUNT_PAGE } });
        counts[status] = countText(r.tasks.length, r.next_page_token);
      }
      return counts;
    }, (counts) => h('dl', { class: 'kv', testid: 'overview-tasks-counts' },
      Object.entries(counts).map(([status, n]) => [h('dt', {}, status), h('dd', { testid: `overview-tasks-${status}` }, n)])));

    // GetStatus per target service seen in policies and actions: its HTTP route needs a
    // service name, so the all-services total (empty name) is out of reach over JSON.
    const services = new Set();
    for (const p of (policiesResult && policiesResult.policies) || []) if (p.action && p.action.target_service) services.add(p.action.target_service);
    for (const a of (actionsResult && actionsResult.actions) || []) if (a.target_service) services.add(a.target_service);
    const names = [...services].sort().slice(0, MAX_SERVICES);
    await load(cards.services,
      () => Promise.all(names.map((name) => api('GET', `/v1/services/${encodeURIComponent(name)}/status`))),
      (rows) => table([
        { title: 'Service', cell: (s) => s.service_name },
        { title: 'Pending', cell: (s) => String(s.pending_actions) },
        { title: 'Delivered', cell: (s) => String(s.delivered_actions) },
        { title: 'Accepted', cell: (s) => String(s.accepted_actions) },
        { title: 'Awaiting approval', cell: (s) => ('awaiting_approval_actions' in s ? String(s.awaiting_approval_actions) : '—') },
        { title: 'Last signal', cell: (s) => timeEl(s.last_signal_ns) },
      ], rows, { testid: 'overview-services-table', rowTestid: (s) => `overview-service-${s.service_name}`, empty: 'No target services yet.' }));
    // Every service's totals (GET /v1/status): the signals of the last minute among them.
    await load(cards.signals, () => api('GET', '/v1/status'),
      (total) => h('p', { class: 'big', testid: 'overview-signals-per-minute' },
        `${total.signals_last_minute || 0} signals/min`));
    // What went wrong lately: tasks that failed, actions that expired (unacknowledged, or not
    // approved in time) or that their target reported failed.
    await load(cards.errors, async () => {
      const failedTasks = await api('GET', '/v1/tasks', { query: { status: 'failed', page_size: COUNT_PAGE } });
      const counts = { 'failed tasks': countText(failedTasks.tasks.length, failedTasks.next_page_token) };
      for (const status of ['EXPIRED', 'FAILED']) {
        const r = await api('GET', '/v1/actions', { query: { status: `ACTION_STATUS_${status}`, page_size: COUNT_PAGE } });
        counts[`${status.toLowerCase()} actions`] = countText(r.actions.length, r.next_page_token);
      }
      return counts;
    }, (counts) => h('dl', { class: 'kv', testid: 'overview-errors-counts' },
      Object.entries(counts).map(([what, n]) => [h('dt', {}, what), h('dd', { testid: `overview-errors-${what.replace(' ', '-')}` }, n)])));
    updated.textContent = `Updated ${new Date().toLocaleTimeString()} (every 5 s).`;
  }

  return poll(refresh, 5000);
}

function card(title, testid) {
  const body = h('div', { testid: `${testid}-body` }, h('p', { class: 'muted' }, 'Loading…'));
  const el = h('section', { class: 'card', testid, 'aria-label': title }, h('h2', {}, title), body);
  return { el, body };
}

/** Runs one card's call and draws it, or shows the API's error in the card. */
async function load(target, call, draw) {
  try {
    const result = await call();
    replace(target.body, draw(result));
    return result;
  } catch (err) {
    const box = h('div', { class: 'error', role: 'alert' });
    showError(box, err);
    replace(target.body, box);
    return null;
  }
}

function countText(n, nextPageToken) {
  return nextPageToken ? `${n}+` : String(n);
}

function countTable(keys, values, prefix, nextPageToken, testid) {
  const counts = Object.fromEntries(keys.map((k) => [k, 0]));
  for (const v of values) counts[v] = (counts[v] || 0) + 1;
  return h('dl', { class: 'kv', testid: `${testid}-counts` }, Object.entries(counts).map(([k, n]) => [
    h('dt', {}, badge(enumLabel(k, prefix))),
    h('dd', { testid: `${testid}-${enumLabel(k, prefix).toLowerCase()}` }, countText(n, nextPageToken && n ? 'more' : '')),
  ]));
}

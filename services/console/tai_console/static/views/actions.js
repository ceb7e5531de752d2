// Actions: filtered by target service and status, with their deliveries and the target's
// status message; those awaiting approval can be approved or rejected (a comment required).

import { api, followStream } from '../api.js';
import {
  badge, clearErrors, confirmDialog, enumLabel, errorBox, field, h, mapText, notice, replace, showError, table, timeEl,
} from '../dom.js';
import { can } from '../roles.js';
import { ACTION_STATUSES, link, pager } from './common.js';

export function render(main) {
  const target = h('input', { name: 'target_service', testid: 'actions-filter-target' });
  const status = h('select', { name: 'status', testid: 'actions-filter-status' },
    h('option', { value: '' }, 'Any status'),
    ACTION_STATUSES.map((s) => h('option', { value: s }, enumLabel(s, 'ACTION_STATUS_'))));
  const live = h('input', { type: 'checkbox', id: 'actions-live', name: 'live', testid: 'actions-live' });
  const liveState = h('p', { class: 'stream-state', testid: 'actions-live-state', role: 'status' });
  const errors = errorBox('actions-error');
  const done = notice('actions-notice');
  const out = h('div', { testid: 'actions-list' });
  const more = h('button', { type: 'button', testid: 'actions-more', hidden: true }, 'More');
  const form = h('form', { class: 'toolbar', testid: 'actions-filter-form', 'aria-label': 'Filter actions' },
    field('Target service', target, { errorFor: 'target_service' }),
    field('Status', status, { errorFor: 'status' }),
    h('button', { type: 'submit', class: 'primary', testid: 'actions-filter-submit' }, 'List'),
    h('div', { class: 'checkbox' }, live, h('label', { for: 'actions-live' }, 'Live')));
  main.append(h('h1', {}, 'Actions'), form, liveState, errors, done, out, more);

  let rows = [];
  const pages = pager('/v1/actions', 'actions',
    () => ({ target_service: target.value.trim(), status: status.value, page_size: 100 }), more);
  async function fetchPage(reset) {
    try {
      rows = await pages(reset);
      clearErrors(form, errors);
      draw();
    } catch (err) {
      showError(errors, err, form);
    }
  }

  function reviewButton(action, verb, label) {
    return h('button', { type: 'button', class: verb === 'reject' ? 'danger' : 'primary', testid: `action-${verb}-${action.id}`,
      'aria-label': `${label} action ${action.id}`, onclick: async () => {
        const result = await confirmDialog({
          title: `${label} action ${action.id}?`,
          message: verb === 'approve'
            ? `It will be delivered to ${action.target_service}.`
            : 'It ends REJECTED and is never delivered.',
          confirmLabel: label, testid: `action-${verb}-confirm`,
          reason: { name: 'comment', label: 'Comment (required)', required: true },
          run: (comment) => api('POST', `/v1/actions/${encodeURIComponent(action.id)}:${verb}`, { body: { comment } }),
        });
        if (result) {
          done.textContent = `Action ${action.id}: ${verb === 'approve' ? 'approved' : 'rejected'}.`;
          fetchPage(true);
        }
      } }, label);
  }

  function draw() {
    const mayReview = can('/tai.v1.Coordinator/ApproveAction');
    replace(out, table([
      { title: 'Id', cell: (a) => h('code', {}, a.id) },
      { title: 'Type', cell: (a) => a.action_type },
      { title: 'Target', cell: (a) => a.target_service },
      { title: 'Status', cell: (a) => badge(enumLabel(a.status, 'ACTION_STATUS_'), `action-status-${a.id}`) },
      { title: 'Deliveries', cell: (a) => `${a.delivery_count} / ${a.max_deliveries || '—'}` },
      { title: 'Status message', cell: (a) => a.status_message || '—' },
      { title: 'Policy', cell: (a) => (a.policy_id ? link(`#/policies/${encodeURIComponent(a.policy_id)}`, `${a.policy_id} v${a.policy_version}`) : '—') },
      { title: 'Signal', cell: (a) => (a.signal_id ? link(`#/signals/${encodeURIComponent(a.signal_id)}`, a.signal_id) : '—') },
      { title: 'Parameters', cell: (a) => mapText(a.parameters) },
      { title: 'Created', cell: (a) => timeEl(a.timestamp_ns) },
      { title: 'Next delivery', cell: (a) => timeEl(a.next_delivery_ns) },
      { title: 'Approval', cell: (a) => approvalCell(a) },
      { title: 'Review', cell: (a) => (a.status === 'ACTION_STATUS_AWAITING_APPROVAL' && mayReview
        ? h('div', { class: 'buttons' }, reviewButton(a, 'approve', 'Approve'), reviewButton(a, 'reject', 'Reject'))
        : '—') },
    ], rows, { testid: 'actions-table', rowTestid: (a) => `action-row-${a.id}`, empty: 'No action matches.' }));
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    fetchPage(true);
  });
  more.addEventListener('click', () => fetchPage(false));

  // Live: follows WatchActions for one target (GET /v1/actions:watch), which reads changes
  // without taking delivery — never StreamActions, which takes delivery (changes the actions'
  // state), so a viewer must not open it. Each change re-reads the list; after a broken
  // connection the stream resumes from the last change it saw.
  let stopLive = null;
  let lastSeenNs = '0';
  let refresh = null;
  live.addEventListener('change', () => {
    if (stopLive) stopLive();
    stopLive = null;
    liveState.textContent = '';
    if (!live.checked) return;
    const service = target.value.trim();
    if (!service) {
      live.checked = false;
      liveState.textContent = 'Live needs a target service: type one above.';
      target.focus();
      return;
    }
    lastSeenNs = '0';
    stopLive = followStream('/v1/actions:watch', {
      query: () => ({ target_service: service, after_ns: lastSeenNs === '0' ? undefined : lastSeenNs }),
      onMessage: (action) => {
        if (BigInt(action.updated_at_ns || '0') > BigInt(lastSeenNs)) lastSeenNs = action.updated_at_ns;
        clearTimeout(refresh);
        refresh = setTimeout(() => fetchPage(true), 150);
      },
      onState: (state) => {
        liveState.textContent = state === 'open'
          ? `Live: ${service}, following its changes.`
          : `Live: ${service}, ${state}…`;
      },
    });
    fetchPage(true);
  });
  fetchPage(true);
  return () => {
    if (stopLive) stopLive();
  };
}

function approvalCell(a) {
  if (a.reviewed_by) {
    return h('span', {}, `${a.reviewed_by}: "${a.review_comment}" `, timeEl(a.reviewed_at_ns));
  }
  if (Number(a.approval_deadline_ns)) return h('span', {}, 'until ', timeEl(a.approval_deadline_ns));
  return '—';
}

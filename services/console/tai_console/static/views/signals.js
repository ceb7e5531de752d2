// Signals: open one by id to read its decision record (GET /v1/signals/{id}:explain), and a
// filtered list of recent signals (GET /v1/signals, when the API has that route).

import { ApiError, api } from '../api.js';
import {
  badge, clearErrors, definitionList, enumLabel, errorBox, field, h, mapText, replace, showError, table, timeEl,
} from '../dom.js';
import { link, pager } from './common.js';

export function render(main, id) {
  const openInput = h('input', { name: 'signal_id', required: true, testid: 'signal-open-id', value: id || '' });
  const openErrors = errorBox('signal-open-error');
  const openForm = h('form', { class: 'toolbar', testid: 'signal-open-form', 'aria-label': 'Open a signal' },
    field('Signal id', openInput, { errorFor: 'signal_id' }),
    h('button', { type: 'submit', class: 'primary', testid: 'signal-open-submit' }, 'Explain'));
  const record = h('div', { testid: 'signal-decision' });
  openForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = openInput.value.trim();
    if (value) location.hash = `#/signals/${encodeURIComponent(value)}`;
  });

  const list = recentSignals();
  main.append(h('h1', {}, 'Signals'), openForm, openErrors, record, list.el);

  if (id) {
    replace(record, h('p', { class: 'muted' }, 'Loading…'));
    api('GET', `/v1/signals/${encodeURIComponent(id)}:explain`)
      .then((decision) => replace(record, decisionRecord(decision)))
      .catch((err) => {
        replace(record);
        showError(openErrors, err, openForm);
      });
  }
  return () => {};
}

/** A SignalDecision: the signal, then every policy's outcome and why. */
function decisionRecord(d) {
  const s = d.signal || {};
  return h('section', { class: 'panel', 'aria-label': 'Decision record' },
    h('h2', {}, `Signal ${s.id}`),
    definitionList([
      ['Type', s.signal_type],
      ['Source', s.source || '—'],
      ['Priority', String(s.priority)],
      ['Metadata', mapText(s.metadata)],
      ['Happened', timeEl(s.timestamp_ns)],
      ['Received', timeEl(s.received_at_ns)],
      ['Evaluated', timeEl(d.evaluated_at_ns)],
      ['Policy revision', String(d.policy_revision)],
      ['Policies evaluated', h('span', { testid: 'signal-policies-evaluated' }, String(d.policies_evaluated))],
      ['Replica', d.replica_id || '—'],
      ['Actions', (s.action_ids || []).length ? s.action_ids.join(', ') : '—'],
    ], 'signal-fields'),
    h('h3', {}, 'Decisions'),
    table([
      { title: 'Policy', cell: (p) => link(`#/policies/${encodeURIComponent(p.policy_id)}`, `${p.policy_name || p.policy_id} (v${p.policy_version})`) },
      { title: 'Mode', cell: (p) => enumLabel(p.mode, 'POLICY_STATE_') },
      { title: 'Outcome', cell: (p) => badge(enumLabel(p.outcome, 'DECISION_OUTCOME_')) },
      { title: 'Failed clause', cell: (p) => (p.failed_clause ? h('code', {}, p.failed_clause) : '—') },
      { title: 'Error', cell: (p) => p.error || '—' },
      { title: 'Held', cell: (p) => (p.hold_reason && p.hold_reason !== 'HOLD_REASON_UNSPECIFIED'
        ? h('span', {}, `${enumLabel(p.hold_reason, 'HOLD_REASON_').toLowerCase()} by ${p.held_by || '—'} until `, timeEl(p.held_until_ns))
        : '—') },
      { title: 'Action', cell: (p) => (p.action_id ? `${p.action_id}${p.target_service ? ` → ${p.target_service}` : ''}` : '—') },
    ], d.decisions || [], { testid: 'signal-decisions-table', rowTestid: (p) => `signal-decision-${p.policy_id}`, empty: 'No policy was evaluated against this signal.' }),
    Number(d.omitted_not_matched)
      ? h('p', { class: 'muted', testid: 'signal-omitted' }, `${d.omitted_not_matched} more policies did not match (not recorded one by one).`)
      : null);
}

/** The list of recent signals with the API's filters, paged by next_page_token. */
function recentSignals() {
  const type = h('input', { name: 'signal_type', testid: 'signals-filter-type' });
  const source = h('input', { name: 'source', testid: 'signals-filter-source' });
  const minPriority = h('input', { name: 'min_priority', type: 'number', min: 0, max: 10, testid: 'signals-filter-min-priority' });
  const metadata = h('input', { name: 'metadata', testid: 'signals-filter-metadata', placeholder: 'key=value, key=value' });
  const errors = errorBox('signals-list-error');
  const out = h('div', { testid: 'signals-list' });
  const more = h('button', { type: 'button', testid: 'signals-more', hidden: true }, 'More');
  const form = h('form', { class: 'toolbar', testid: 'signals-filter-form', 'aria-label': 'Filter signals' },
    field('Type', type, { errorFor: 'signal_type' }),
    field('Source', source, { errorFor: 'source' }),
    field('Min priority', minPriority, { errorFor: 'min_priority' }),
    field('Metadata', metadata, { errorFor: 'metadata' }),
    h('button', { type: 'submit', class: 'primary', testid: 'signals-filter-submit' }, 'List'));
  const el = h('section', { 'aria-label': 'Recent signals' }, h('h2', {}, 'Recent signals'), form, errors, out, more);

  let rows = [];
  const pages = pager('/v1/signals', 'signals', () => ({
    signal_type: type.value.trim(),
    source: source.value.trim(),
    min_priority: minPriority.value,
    metadata: metadata.value.split(',').map((m) => m.trim()).filter(Boolean),
    page_size: 50,
  }), more);
  async function fetchPage(reset) {
    clearErrors(form, errors);
    try {
      rows = await pages(reset);
      replace(out, table([
        { title: 'Id', cell: (s) => link(`#/signals/${encodeURIComponent(s.id)}`, s.id, `signal-link-${s.id}`) },
        { title: 'Type', cell: (s) => s.signal_type },
        { title: 'Source', cell: (s) => s.source || '—' },
        { title: 'Priority', cell: (s) => String(s.priority) },
        { title: 'Metadata', cell: (s) => mapText(s.metadata) },
        { title: 'Matched', cell: (s) => String((s.matched_policy_ids || []).length) },
        { title: 'Actions', cell: (s) => String((s.action_ids || []).length) },
        { title: 'Received', cell: (s) => timeEl(s.received_at_ns) },
      ], rows, { testid: 'signals-table', rowTestid: (s) => `signal-row-${s.id}`, empty: 'No signal matches.' }));
    } catch (err) {
      // Without a ListSignals route the gateway answers 404 (or 405) for the path itself, with
      // no google.rpc.Status body; a Coordinator without the method answers UNIMPLEMENTED (12).
      if (err instanceof ApiError && (((err.status === 404 || err.status === 405) && err.code === null) || err.code === 12)) {
        replace(out, h('p', { class: 'muted', testid: 'signals-list-unavailable' }, 'Listing not available: this API has no signal listing route. Open a signal by id above.'));
        form.hidden = true;
        more.hidden = true;
        return;
      }
      showError(errors, err, form);
    }
  }
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    fetchPage(true);
  });
  more.addEventListener('click', () => fetchPage(false));
  fetchPage(true);
  return { el };
}

// Policies: the list by state (live from GET /v1/policies:stream), one policy's versions with a
// diff of any two, and the lifecycle: propose (with the condition checked as you type),
// simulate, dry-run, enforce, revoke, roll back.

import { api, followStream, listAll, requestId } from '../api.js';
import {
  badge, clearErrors, confirmDialog, definitionList, enumLabel, errorBox, field, h, mapText, notice,
  replace, showError, showFieldErrors, table, timeEl,
} from '../dom.js';
import { can } from '../roles.js';
import { POLICY_STATES, link } from './common.js';

const POLICY_TYPES = ['operational', 'security', 'finance'];

export function render(main, id) {
  return id ? renderDetail(main, id) : renderList(main);
}

/**
 * Follows the policy stream: every current policy first, then each change. Reconnects with
 * backoff and resumes from the last revision seen, so nothing is missed or replayed twice.
 */
function followPolicies(fromRevision, onPolicy, stateEl) {
  let lastRevision = fromRevision;
  return followStream('/v1/policies:stream', {
    query: () => ({ from_revision: lastRevision || undefined }),
    onMessage: (policy) => {
      const revision = Number(policy.revision || 0);
      if (revision > lastRevision) lastRevision = revision;
      onPolicy(policy);
    },
    onState: (state, detail) => {
      if (state === 'open') stateEl.textContent = `Live: following changes (from revision ${lastRevision}).`;
      else if (state === 'connecting') stateEl.textContent = 'Live: connecting…';
      else if (state === 'retrying') stateEl.textContent = `Live: disconnected (${detail.error.message}); reconnecting in ${Math.round(detail.delayMs / 1000)} s from revision ${lastRevision}.`;
      else if (state === 'stopped') stateEl.textContent = `Live updates stopped: ${detail.message}`;
    },
  });
}

// ---------------------------------------------------------------- list

function renderList(main) {
  const policies = new Map();
  const errors = errorBox('policies-error');
  const streamState = h('p', { class: 'stream-state', testid: 'policies-stream-state', role: 'status' });
  const search = h('input', { type: 'search', name: 'search', testid: 'policies-search', placeholder: 'name or id' });
  const stateFilter = h('select', { name: 'state', testid: 'policies-state-filter' },
    h('option', { value: '' }, 'All states'),
    POLICY_STATES.map((s) => h('option', { value: s }, enumLabel(s, 'POLICY_STATE_'))));
  const listEl = h('div', { testid: 'policies-list' }, h('p', { class: 'muted' }, 'Loading…'));
  const proposeSlot = h('div');
  const proposeButton = can('/tai.v1.Governor/ProposePolicy')
    ? h('button', { type: 'button', class: 'primary', testid: 'policy-propose-open', onclick: () => {
      replace(proposeSlot, proposeForm({ onDone: (receipt) => { location.hash = `#/policies/${encodeURIComponent(receipt.resource_id)}`; } }));
    } }, 'Propose a policy')
    : null;

  main.append(h('h1', {}, 'Policies'), streamState, errors,
    h('div', { class: 'toolbar' }, field('Search', search), field('State', stateFilter), proposeButton),
    proposeSlot, listEl);

  function draw() {
    const term = search.value.trim().toLowerCase();
    const wanted = stateFilter.value;
    const rows = [...policies.values()]
      .filter((p) => !term || p.id.toLowerCase().includes(term) || (p.policy_name || '').toLowerCase().includes(term))
      .filter((p) => !wanted || p.state === wanted);
    const groups = POLICY_STATES.filter((s) => !wanted || s === wanted).map((state) => {
      const inState = rows.filter((p) => p.state === state).sort((a, b) => (a.policy_name || '').localeCompare(b.policy_name || ''));
      const label = enumLabel(state, 'POLICY_STATE_');
      return h('section', { 'aria-label': `${label} policies`, testid: `policies-group-${label.toLowerCase()}` },
        h('h2', {}, `${label} (${inState.length})`),
        table([
          { title: 'Name', cell: (p) => link(`#/policies/${encodeURIComponent(p.id)}`, p.policy_name || p.id, `policy-link-${p.id}`) },
          { title: 'Id', cell: (p) => h('code', {}, p.id) },
          { title: 'Type', cell: (p) => p.policy_type },
          { title: 'Version', cell: (p) => String(p.version) },
          { title: 'Enabled', cell: (p) => (p.enabled ? 'yes' : 'no') },
          { title: 'Target', cell: (p) => (p.action ? `${p.action.target_service} / ${p.action.action_type}` : '—') },
          { title: 'Updated', cell: (p) => timeEl(p.updated_at_ns) },
        ], inState, { rowTestid: (p) => `policy-row-${p.id}`, empty: 'None.' }));
    });
    replace(listEl, groups);
  }
  search.addEventListener('input', draw);
  stateFilter.addEventListener('change', draw);

  let stop = () => {};
  let stopped = false;
  (async () => {
    let fromRevision = 0;
    try {
      const { items } = await listAll('/v1/policies', 'policies', { maxPages: 20, pageSize: 1000 });
      for (const p of items) {
        policies.set(p.id, p);
        fromRevision = Math.max(fromRevision, Number(p.revision || 0));
      }
      draw();
    } catch (err) {
      showError(errors, err);
    }
    if (stopped) return;
    stop = followPolicies(fromRevision, (policy) => {
      const known = policies.get(policy.id);
      if (!known || Number(policy.revision) >= Number(known.revision)) policies.set(policy.id, policy);
      draw();
    }, streamState);
  })();
  return () => {
    stopped = true;
    stop();
  };
}

// ---------------------------------------------------------------- propose form

/** "k=v" lines to a map, for parameters. */
function parseParameters(text) {
  const result = {};
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (!trimmed) continue;
    const eq = trimmed.indexOf('=');
    if (eq <= 0) throw new Error(`parameter "${trimmed}" is not key=value`);
    result[trimmed.slice(0, eq).trim()] = trimmed.slice(eq + 1).trim();
  }
  return result;
}

/**
 * The propose form: a new policy, or (with `base`) a new version of one, prefilled. The
 * condition is checked as it is typed through the API's own validation: a one-signal draft
 * simulation, whose 400 names `draft.condition`.
 */
function proposeForm({ base = null, onDone }) {
  const action = (base && base.action) || {};
  const type = h('select', { name: 'policy_type', testid: 'propose-type' },
    POLICY_TYPES.map((t) => h('option', { value: t, selected: base ? base.policy_type === t : t === 'operational' }, t)));
  const name = h('input', { name: 'policy_name', required: true, testid: 'propose-name', value: (base && base.policy_name) || '' });
  const description = h('input', { name: 'description', testid: 'propose-description', value: (base && base.description) || '' });
  const condition = h('textarea', { name: 'condition', rows: 3, required: true, testid: 'propose-condition', spellcheck: 'false' });
  condition.value = (base && base.condition) || '';
  const conditionState = h('p', { class: 'hint', testid: 'propose-condition-check', 'aria-live': 'polite' });
  const target = h('input', { name: 'action.target_service', required: true, testid: 'propose-target', value: action.target_service || '' });
  const actionType = h('input', { name: 'action.action_type', required: true, testid: 'propose-action-type', value: action.action_type || '' });
  const parameters = h('textarea', { name: 'action.parameters', rows: 2, testid: 'propose-parameters', spellcheck: 'false' });
  parameters.value = Object.entries(action.parameters || {}).map(([k, v]) => `${k}=${v}`).join('\n');
  const cooldown = h('input', { name: 'action.cooldown_seconds', type: 'number', min: 0, testid: 'propose-cooldown', value: Number(action.cooldown_seconds || 0) });
  const approval = h('input', { name: 'action.require_approval', type: 'checkbox', id: 'propose-approval', testid: 'propose-require-approval', checked: Boolean(action.require_approval) });
  const errors = errorBox('propose-error');
  const summary = h('div', { testid: 'propose-simulation' });
  const submit = h('button', { type: 'submit', class: 'primary', testid: 'propose-submit' }, base ? 'Propose new version' : 'Propose');
  const simulate = can('/tai.v1.Coordinator/SimulatePolicy')
    ? h('button', { type: 'button', testid: 'propose-simulate' }, 'Simulate draft (last hour)')
    : null;
  const cancel = h('button', { type: 'button', class: 'secondary', testid: 'propose-cancel' }, 'Close');

  const form = h('form', { class: 'panel', testid: 'propose-form', 'aria-label': base ? `New version of ${base.policy_name}` : 'Propose a policy' },
    h('h2', {}, base ? `New version of ${base.policy_name}` : 'Propose a policy'),
    field('Type', type, { errorFor: 'policy_type' }),
    field('Name', name, { errorFor: 'policy_name' }),
    field('Description', description, { errorFor: 'description' }),
    field('Condition (CEL over signal)', condition, { errorFor: 'condition', hint: 'e.g. signal.type == "alert" && signal.priority >= 8' }),
    conditionState,
    field('Target service', target, { errorFor: 'action.target_service' }),
    field('Action type', actionType, { errorFor: 'action.action_type' }),
    field('Parameters (key=value, one a line)', parameters, { errorFor: 'action.parameters' }),
    field('Cooldown (seconds)', cooldown, { errorFor: 'action.cooldown_seconds' }),
    h('div', { class: 'checkbox' }, approval, h('label', { for: 'propose-approval' }, 'Require approval')),
    errors,
    h('div', { class: 'buttons' }, submit, simulate, cancel),
    summary);

  function draft() {
    return {
      condition: condition.value,
      action: {
        target_service: target.value.trim(),
        action_type: actionType.value.trim(),
        parameters: parseParameters(parameters.value),
        cooldown_seconds: String(Number(cooldown.value || 0)),
        require_approval: approval.checked,
      },
    };
  }

  // Check as you type, 400 ms after the last key. The slot under the condition is the one the
  // API's violation ("draft.condition") goes to; other fields are checked on submit.
  let timer = null;
  let checkSeq = 0;
  const conditionSlot = () => form.querySelector('[data-error-for="condition"]');
  async function checkCondition() {
    const seq = ++checkSeq;
    const slot = conditionSlot();
    if (!condition.value.trim()) {
      conditionState.textContent = '';
      return;
    }
    if (!can('/tai.v1.Coordinator/SimulatePolicy')) return;
    conditionState.textContent = 'Checking…';
    try {
      await api('POST', '/v1/simulations', {
        body: { draft: { condition: condition.value, action: { target_service: target.value.trim() || 'check', action_type: actionType.value.trim() } }, last: 1 },
      });
      if (seq !== checkSeq) return;
      slot.textContent = '';
      slot.hidden = true;
      condition.removeAttribute('aria-invalid');
      conditionState.textContent = 'Condition is valid.';
    } catch (err) {
      if (seq !== checkSeq) return;
      const violation = (err.fieldViolations || []).find((v) => v.field === 'draft.condition');
      if (violation) {
        slot.textContent = violation.description;
        slot.hidden = false;
        condition.setAttribute('aria-invalid', 'true');
        conditionState.textContent = '';
      } else {
        slot.hidden = true;
        conditionState.textContent = `Could not check: ${err.message}`;
      }
    }
  }
  condition.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(checkCondition, 400);
  });

  if (simulate) {
    simulate.addEventListener('click', async () => {
      clearErrors(form, errors);
      replace(summary, h('p', { class: 'muted' }, 'Simulating…'));
      try {
        // Neither `last` nor a window: the API rehearses the last hour.
        const report = await api('POST', '/v1/simulations', { body: { draft: draft() } });
        replace(summary, simulationSummary(report));
      } catch (err) {
        replace(summary);
        showError(errors, remapDraft(err), form);
      }
    });
  }
  cancel.addEventListener('click', () => form.remove());

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form, errors);
    let body;
    try {
      body = {
        id: base ? base.id : '',
        version: base ? String(base.version) : '0',
        policy_type: type.value,
        policy_name: name.value.trim(),
        description: description.value.trim(),
        ...draft(),
        request_id: requestId(),
      };
    } catch (err) {
      showFieldErrors(form, [{ field: 'action.parameters', description: err.message }], errors);
      return;
    }
    const confirmed = await confirmDialog({
      title: base ? 'Propose a new version?' : 'Propose this policy?',
      message: `"${body.policy_name}" will be stored as PROPOSED; it acts on nothing until enforced.`,
      confirmLabel: 'Propose',
      testid: 'propose-confirm',
    });
    if (!confirmed) return;
    submit.disabled = true;
    try {
      const receipt = await api('POST', '/v1/policies', { body });
      onDone(receipt);
    } catch (err) {
      showError(errors, err, form);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** A draft simulation names fields "draft.x": the form's fields are named without it. */
function remapDraft(err) {
  for (const v of err.fieldViolations || []) v.field = v.field.replace(/^draft\./, '');
  return err;
}

/** The summary of a SimulatePolicyResponse. */
function simulationSummary(r) {
  const counts = (obj, testid, empty) => {
    const entries = Object.entries(obj || {}).sort((a, b) => Number(b[1]) - Number(a[1]));
    return entries.length
      ? table([{ title: 'Key', cell: (e) => e[0] }, { title: 'Count', cell: (e) => String(e[1]) }], entries, { testid })
      : h('p', { class: 'muted' }, empty);
  };
  return h('section', { class: 'panel', testid: 'simulation-summary', 'aria-label': 'Simulation' },
    h('h3', {}, 'Simulation'),
    definitionList([
      ['Window', h('span', {}, timeEl(r.window_since_ns), ' – ', timeEl(r.window_until_ns))],
      ['Scanned', h('span', { testid: 'simulation-scanned' }, `${r.signals_scanned}${r.complete ? '' : ' (incomplete: stopped at the time limit)'}`)],
      ['Matched', h('span', { testid: 'simulation-matched' }, String(r.matched))],
      ['Actions', h('span', { testid: 'simulation-actions' }, String(r.actions))],
      ['Held', h('span', { testid: 'simulation-held' }, String(r.held))],
      ['Not matched', String(r.not_matched)],
      ['Errors', h('span', { testid: 'simulation-errors' }, String(r.errors))],
      ['Elapsed', `${Number(r.elapsed_seconds || 0).toFixed(2)} s`],
    ]),
    h('h4', {}, 'Actions by target'), counts(r.actions_by_target, 'simulation-by-target', 'None.'),
    h('h4', {}, 'Held by reason'), counts(r.held_by_reason, 'simulation-held-by-reason', 'None.'),
    h('h4', {}, 'Top failed clauses'), counts(r.failed_clauses, 'simulation-failed-clauses', 'None.'),
    h('h4', {}, 'Errors'),
    table([
      { title: 'Error', cell: (e) => e.error },
      { title: 'Count', cell: (e) => String(e.count) },
      { title: 'First signal', cell: (e) => link(`#/signals/${encodeURIComponent(e.signal_id)}`, e.signal_id) },
    ], r.error_samples || [], { testid: 'simulation-error-samples', empty: 'None.' }));
}

// ---------------------------------------------------------------- detail

function renderDetail(main, id) {
  const errors = errorBox('policy-error');
  const done = notice('policy-notice');
  const streamState = h('p', { class: 'stream-state', testid: 'policy-stream-state', role: 'status' });
  const head = h('div', { testid: 'policy-summary' }, h('p', { class: 'muted' }, 'Loading…'));
  const buttons = h('div', { class: 'buttons', testid: 'policy-actions' });
  const work = h('div');
  const versionsEl = h('div', { testid: 'policy-versions' });
  const diffEl = h('div', { testid: 'policy-diff' });
  const statsEl = h('div', { testid: 'policy-decisions' }, h('p', { class: 'muted' }, 'Loading…'));
  main.append(h('p', {}, link('#/policies', '← All policies', 'policy-back')),
    h('h1', { testid: 'policy-title' }, `Policy ${id}`), streamState, errors, done, head, buttons, work,
    h('h2', {}, 'Decisions in the last hour'), statsEl,
    h('h2', {}, 'Versions'), versionsEl, diffEl);

  let current = null;
  let versions = [];

  async function load() {
    try {
      current = await api('GET', `/v1/policies/${encodeURIComponent(id)}`);
      const listed = await listAll(`/v1/policies/${encodeURIComponent(id)}/versions`, 'versions', { maxPages: 10, pageSize: 200 });
      versions = listed.items;
      drawSummary();
      drawButtons();
      drawVersions();
    } catch (err) {
      showError(errors, err);
    }
    drawDecisions();
  }

  // What the policy's decisions came to, read from the signals' decision records
  // (SummarizeDecisions), by outcome and by what held its actions back.
  async function drawDecisions() {
    try {
      const s = await api('GET', '/v1/signals:summarize', { query: { policy_id: id } });
      const outcomes = Object.entries(s.by_outcome || {}).map(([k, v]) => [k, String(v)]);
      const holds = Object.entries(s.by_hold_reason || {}).map(([k, v]) => [`held: ${k}`, String(v)]);
      replace(statsEl,
        h('p', { testid: 'policy-decisions-scanned' },
          `${s.decided || 0} decisions in ${s.signals_scanned || 0} signals; ${s.actions || 0} actions created`
          + (s.complete ? '' : ' (scan stopped at its deadline: partial)')),
        outcomes.length || holds.length
          ? definitionList([...outcomes, ...holds], 'policy-decisions-counts')
          : h('p', { class: 'muted' }, 'No decisions in the last hour.'));
    } catch (err) {
      replace(statsEl, h('p', { class: 'muted', testid: 'policy-decisions-error' }, `Decision statistics unavailable: ${err.message}`));
    }
  }

  function drawSummary() {
    const p = current;
    const a = p.action || {};
    main.querySelector('[data-testid="policy-title"]').textContent = p.policy_name || p.id;
    replace(head, definitionList([
      ['Id', h('code', {}, p.id)],
      ['State', badge(enumLabel(p.state, 'POLICY_STATE_'), 'policy-state')],
      ['State reason', p.state_reason || '—'],
      ['Version', h('span', { testid: 'policy-version' }, String(p.version))],
      ['Type', p.policy_type],
      ['Enabled', p.enabled ? 'yes' : 'no'],
      ['Description', p.description || '—'],
      ['Condition', h('pre', { testid: 'policy-condition' }, p.condition)],
      ['Action', `${a.target_service || '—'} / ${a.action_type || '—'}`],
      ['Parameters', mapText(a.parameters)],
      ['Cooldown', `${a.cooldown_seconds || 0} s`],
      ['Limits', (a.limits || []).map((l) => `${l.max_actions} per ${l.window_seconds} s (${enumLabel(l.scope, 'LIMIT_SCOPE_')})`).join('; ') || '—'],
      ['Requires approval', a.require_approval ? 'yes' : 'no'],
      ['Created by', p.created_by || '—'],
      ['Last modified by', p.last_modified_by || '—'],
      ['Updated', timeEl(p.updated_at_ns)],
      ['Effective', timeEl(p.effective_time_ns)],
      ['Revision', String(p.revision)],
    ], 'policy-fields'));
  }

  function transition({ label, testid, title, message, path, body, reason, danger }) {
    return h('button', { type: 'button', class: danger ? 'danger' : '', testid, onclick: async () => {
      const result = await confirmDialog({
        title, message, confirmLabel: label, testid: `${testid}-confirm`,
        reason: reason ? { name: 'reason', label: 'Reason', required: false } : null,
        run: async (text) => api('POST', path, { body: { ...body(), ...(reason ? { reason: text } : {}), request_id: requestId() } }),
      });
      if (result) {
        done.textContent = `${label}: done.`;
        await load();
      }
    } }, label);
  }

  function drawButtons() {
    const p = current;
    const path = (verb) => `/v1/policies/${encodeURIComponent(p.id)}:${verb}`;
    const versionBody = () => ({ version: String(current.version) });
    const list = [];
    if (can('/tai.v1.Governor/ProposePolicy')) {
      list.push(h('button', { type: 'button', testid: 'policy-new-version', onclick: () => {
        replace(work, proposeForm({ base: current, onDone: () => { replace(work); done.textContent = 'New version proposed.'; load(); } }));
      } }, 'Propose new version'));
    }
    if (can('/tai.v1.Coordinator/SimulatePolicy')) {
      list.push(h('button', { type: 'button', testid: 'policy-simulate', onclick: async () => {
        const confirmed = await confirmDialog({
          title: 'Simulate against the last hour?',
          message: `Rehearses version ${p.version} over the signals received in the last hour. Writes nothing.`,
          confirmLabel: 'Simulate', testid: 'policy-simulate-confirm',
        });
        if (!confirmed) return;
        replace(work, h('p', { class: 'muted' }, 'Simulating…'));
        try {
          const report = await api('POST', '/v1/simulations', { body: { stored: { id: p.id, version: String(p.version) } } });
          replace(work, simulationSummary(report));
        } catch (err) {
          replace(work);
          showError(errors, err);
        }
      } }, 'Simulate (last hour)'));
    }
    if (can('/tai.v1.Governor/EnforcePolicy') && ['POLICY_STATE_PROPOSED', 'POLICY_STATE_DRY_RUN'].includes(p.state)) {
      if (p.state === 'POLICY_STATE_PROPOSED') {
        list.push(transition({ label: 'Dry-run', testid: 'policy-dry-run', title: 'Put this policy in dry-run?',
          message: 'Its condition is evaluated and matches recorded; no action is emitted.',
          path: path('enforce'), body: () => ({ ...versionBody(), dry_run: true }), reason: true }));
      }
      list.push(transition({ label: 'Enforce', testid: 'policy-enforce', title: 'Enforce this policy?',
        message: 'Matching signals will create actions.', path: path('enforce'), body: versionBody, reason: true }));
    }
    if (can('/tai.v1.Governor/RevokePolicy') && p.state !== 'POLICY_STATE_REVOKED') {
      list.push(transition({ label: 'Revoke', testid: 'policy-revoke', title: 'Revoke this policy?', danger: true,
        message: 'It stops acting on signals at once.', path: path('revoke'), body: versionBody, reason: true }));
    }
    if (can('/tai.v1.Governor/ProposePolicy') && versions.length > 1) {
      const choice = h('select', { name: 'rollback_to_version', testid: 'policy-rollback-version' },
        versions.filter((v) => v.version !== p.version).map((v) => h('option', { value: v.version }, `version ${v.version}`)));
      list.push(h('span', { class: 'toolbar' }, field('Roll back to', choice),
        h('button', { type: 'button', testid: 'policy-rollback', onclick: async () => {
          const result = await confirmDialog({
            title: `Roll back to version ${choice.value}?`,
            message: 'A new version copying it is proposed; enforce it to put it in force.',
            confirmLabel: 'Roll back', testid: 'policy-rollback-confirm',
            run: () => api('POST', '/v1/policies', { body: { id: p.id, version: String(p.version), rollback_to_version: String(choice.value), request_id: requestId() } }),
          });
          if (result) {
            done.textContent = `Rolled back to version ${choice.value} (as a new proposed version).`;
            await load();
          }
        } }, 'Roll back')));
    }
    replace(buttons, list.length ? list : h('p', { class: 'muted' }, 'Your role may only read this policy.'));
  }

  function drawVersions() {
    replace(versionsEl, table([
      { title: 'Version', cell: (v) => String(v.version) },
      { title: 'State', cell: (v) => badge(enumLabel(v.state, 'POLICY_STATE_')) },
      { title: 'By', cell: (v) => v.last_modified_by || v.created_by || '—' },
      { title: 'Reason', cell: (v) => v.state_reason || (Number(v.rolled_back_from_version) ? `rollback of version ${v.rolled_back_from_version}` : '—') },
      { title: 'Updated', cell: (v) => timeEl(v.updated_at_ns) },
    ], versions, { testid: 'policy-versions-table', rowTestid: (v) => `policy-version-row-${v.version}` }));
    if (versions.length < 2) {
      replace(diffEl, h('p', { class: 'muted' }, 'One version: nothing to compare.'));
      return;
    }
    const pick = (name, testid, index) => h('select', { name, testid },
      versions.map((v, i) => h('option', { value: v.version, selected: i === index }, `version ${v.version}`)));
    const left = pick('diff_from', 'policy-diff-from', 1);
    const right = pick('diff_to', 'policy-diff-to', 0);
    const out = h('div', { testid: 'policy-diff-result' });
    const drawDiff = () => {
      const a = versions.find((v) => String(v.version) === left.value);
      const b = versions.find((v) => String(v.version) === right.value);
      replace(out, diffTable(a, b, left.value, right.value));
    };
    left.addEventListener('change', drawDiff);
    right.addEventListener('change', drawDiff);
    replace(diffEl, h('h2', {}, 'Compare versions'), h('div', { class: 'toolbar' }, field('From', left), field('To', right)), out);
    drawDiff();
  }

  let stop = () => {};
  let stopped = false;
  load().then(() => {
    if (stopped) return;
    // Changes after the revision just read; a change to this policy reloads it.
    stop = followPolicies(current ? Number(current.revision) : 0, (policy) => {
      if (policy.id === id && current && Number(policy.revision) > Number(current.revision)) {
        done.textContent = `Changed by ${policy.last_modified_by || 'someone'}: now ${enumLabel(policy.state, 'POLICY_STATE_')}, version ${policy.version}.`;
        load();
      }
    }, streamState);
  });
  return () => {
    stopped = true;
    stop();
  };
}

// Fields that differ between every version by construction, left out of the diff.
const DIFF_SKIP = new Set(['revision']);

/** Flattens a policy to dotted paths ("action.limits[0].max_actions") for the diff. */
function flatten(value, prefix = '', out = {}) {
  if (Array.isArray(value)) {
    if (!value.length) out[prefix] = '[]';
    value.forEach((item, i) => flatten(item, `${prefix}[${i}]`, out));
  } else if (value && typeof value === 'object') {
    const keys = Object.keys(value);
    if (!keys.length && prefix) out[prefix] = '{}';
    for (const key of keys.sort()) flatten(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else {
    out[prefix] = String(value);
  }
  return out;
}

function diffTable(a, b, aLabel, bLabel) {
  const fa = flatten(a);
  const fb = flatten(b);
  const keys = [...new Set([...Object.keys(fa), ...Object.keys(fb)])].filter((k) => !DIFF_SKIP.has(k)).sort();
  const changed = keys.filter((k) => fa[k] !== fb[k]);
  if (!changed.length) return h('p', { class: 'muted', testid: 'policy-diff-none' }, 'No differences.');
  return table([
    { title: 'Field', cell: (k) => h('code', {}, k) },
    { title: `Version ${aLabel}`, cell: (k) => h('pre', {}, fa[k] ?? '—') },
    { title: `Version ${bLabel}`, cell: (k) => h('pre', {}, fb[k] ?? '—') },
  ], changed, { testid: 'policy-diff-table', rowTestid: (k) => `policy-diff-row-${k}` });
}

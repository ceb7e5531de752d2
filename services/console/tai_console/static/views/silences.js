// Silences: active (and, on request, expired) silences; create one (a matcher, a duration or an
// end, a comment) and expire one now.

import { api, requestId } from '../api.js';
import {
  badge, clearErrors, confirmDialog, dateToNs, enumLabel, errorBox, field, h, notice, replace, showError, showFieldErrors, table, timeEl,
} from '../dom.js';
import { can } from '../roles.js';
import { link, localInputToDate, pager } from './common.js';

export function render(main) {
  const includeExpired = h('input', { type: 'checkbox', id: 'silences-include-expired', name: 'include_expired', testid: 'silences-include-expired' });
  const errors = errorBox('silences-error');
  const done = notice('silences-notice');
  const out = h('div', { testid: 'silences-list' });
  const more = h('button', { type: 'button', testid: 'silences-more', hidden: true }, 'More');
  const createSlot = h('div');
  const createButton = can('/tai.v1.Coordinator/CreateSilence')
    ? h('button', { type: 'button', class: 'primary', testid: 'silence-create-open', onclick: () => replace(createSlot, createForm(() => {
      replace(createSlot);
      done.textContent = 'Silence created.';
      fetchPage(true);
    })) }, 'Create a silence')
    : null;
  main.append(h('h1', {}, 'Silences'),
    h('div', { class: 'toolbar' }, h('div', { class: 'checkbox' }, includeExpired, h('label', { for: 'silences-include-expired' }, 'Include expired')), createButton),
    createSlot, errors, done, out, more);

  let rows = [];
  const pages = pager('/v1/silences', 'silences',
    () => ({ include_expired: includeExpired.checked || undefined, page_size: 100 }), more);
  async function fetchPage(reset) {
    try {
      rows = await pages(reset);
      errors.hidden = true;
      draw();
    } catch (err) {
      showError(errors, err);
    }
  }

  function expireButton(s) {
    return h('button', { type: 'button', class: 'danger', testid: `silence-expire-${s.id}`, 'aria-label': `Expire silence ${s.id}`, onclick: async () => {
      const result = await confirmDialog({
        title: 'Expire this silence now?',
        message: `"${s.comment}": matching signals act again from now on.`,
        confirmLabel: 'Expire', testid: 'silence-expire-confirm',
        reason: { name: 'comment', label: 'Comment', required: false },
        run: (comment) => api('POST', `/v1/silences/${encodeURIComponent(s.id)}:expire`, { body: { comment } }),
      });
      if (result) {
        done.textContent = `Silence ${s.id} expired.`;
        fetchPage(true);
      }
    } }, 'Expire');
  }

  function draw() {
    const mayExpire = can('/tai.v1.Coordinator/ExpireSilence');
    replace(out, table([
      { title: 'Id', cell: (s) => h('code', {}, s.id) },
      { title: 'State', cell: (s) => badge(enumLabel(s.state, 'SILENCE_STATE_'), `silence-state-${s.id}`) },
      { title: 'Matcher', cell: (s) => matcherText(s.matcher) },
      { title: 'Starts', cell: (s) => timeEl(s.starts_at_ns) },
      { title: 'Ends', cell: (s) => timeEl(s.ends_at_ns) },
      { title: 'Comment', cell: (s) => s.comment },
      { title: 'Created by', cell: (s) => s.created_by || '—' },
      { title: 'Expired by', cell: (s) => (s.expired_by ? h('span', {}, `${s.expired_by} `, timeEl(s.expired_at_ns)) : '—') },
      { title: '', cell: (s) => (mayExpire && s.state !== 'SILENCE_STATE_EXPIRED' ? expireButton(s) : '') },
    ], rows, { testid: 'silences-table', rowTestid: (s) => `silence-row-${s.id}`, empty: 'No silence.' }));
  }

  includeExpired.addEventListener('change', () => fetchPage(true));
  more.addEventListener('click', () => fetchPage(false));
  fetchPage(true);
  return () => {};
}

function matcherText(m) {
  const parts = [];
  if (m && m.condition) parts.push(h('div', {}, 'condition: ', h('code', {}, m.condition)));
  if (m && m.target_service) parts.push(h('div', {}, `target: ${m.target_service}`));
  if (m && m.policy_id) parts.push(h('div', {}, 'policy: ', link(`#/policies/${encodeURIComponent(m.policy_id)}`, m.policy_id)));
  return parts.length ? parts : '—';
}

function createForm(onDone) {
  const condition = h('textarea', { name: 'matcher.condition', rows: 2, testid: 'silence-condition', spellcheck: 'false' });
  const target = h('input', { name: 'matcher.target_service', testid: 'silence-target' });
  const policy = h('input', { name: 'matcher.policy_id', testid: 'silence-policy' });
  const starts = h('input', { name: 'starts_at_ns', type: 'datetime-local', testid: 'silence-starts' });
  const duration = h('input', { name: 'duration_minutes', type: 'number', min: 1, value: 60, testid: 'silence-duration' });
  const ends = h('input', { name: 'ends_at_ns', type: 'datetime-local', testid: 'silence-ends' });
  const comment = h('textarea', { name: 'comment', rows: 2, required: true, testid: 'silence-comment' });
  const errors = errorBox('silence-create-error');
  const form = h('form', { class: 'panel', testid: 'silence-create-form', 'aria-label': 'Create a silence' },
    h('h2', {}, 'Create a silence'),
    h('p', { class: 'hint' }, 'Set at least one matcher field; an action is held back when every field set matches.'),
    field('Condition (CEL over signal)', condition, { errorFor: 'matcher.condition' }),
    field('Target service', target, { errorFor: 'matcher.target_service' }),
    field('Policy id', policy, { errorFor: 'matcher.policy_id' }),
    field('Starts (empty: now; your time zone)', starts, { errorFor: 'starts_at_ns' }),
    field('Duration (minutes)', duration, { errorFor: 'duration_minutes', hint: 'Used when no end is given.' }),
    field('Ends (your time zone; overrides the duration)', ends, { errorFor: 'ends_at_ns' }),
    field('Comment (required)', comment, { errorFor: 'comment' }),
    errors,
    h('div', { class: 'buttons' },
      h('button', { type: 'submit', class: 'primary', testid: 'silence-create-submit' }, 'Create'),
      h('button', { type: 'button', testid: 'silence-create-cancel', onclick: () => form.remove() }, 'Close')));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form, errors);
    const start = localInputToDate(starts.value);
    let end = localInputToDate(ends.value);
    if (!end) {
      const minutes = Number(duration.value);
      if (!(minutes > 0)) {
        showFieldErrors(form, [{ field: 'duration_minutes', description: 'give a duration or an end' }], errors);
        return;
      }
      end = new Date((start ? start.getTime() : Date.now()) + minutes * 60000);
    }
    const body = {
      id: requestId(),
      matcher: { condition: condition.value.trim(), target_service: target.value.trim(), policy_id: policy.value.trim() },
      starts_at_ns: start ? dateToNs(start) : '0',
      ends_at_ns: dateToNs(end),
      comment: comment.value.trim(),
    };
    const confirmed = await confirmDialog({
      title: 'Create this silence?',
      message: `Matching actions are held back until ${end.toLocaleString()}.`,
      confirmLabel: 'Create', testid: 'silence-create-confirm',
    });
    if (!confirmed) return;
    try {
      await api('POST', '/v1/silences', { body });
      onDone();
    } catch (err) {
      showError(errors, err, form);
    }
  });
  return form;
}

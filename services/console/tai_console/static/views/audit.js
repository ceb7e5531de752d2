// Audit: the audit trail (admins), filtered by principal and after_seq through the API and by
// resource and time over the fetched page; and a check of the hash chain.

import { api } from '../api.js';
import { badge, clearErrors, errorBox, field, h, nsToDate, replace, showError, table, timeEl } from '../dom.js';
import { can } from '../roles.js';
import { localInputToDate, pager } from './common.js';

export function render(main) {
  const principal = h('input', { name: 'principal', testid: 'audit-filter-principal' });
  const afterSeq = h('input', { name: 'after_seq', type: 'number', min: 0, testid: 'audit-filter-after-seq' });
  const resource = h('input', { name: 'resource', testid: 'audit-filter-resource', placeholder: 'policy/…' });
  const since = h('input', { name: 'since', type: 'datetime-local', testid: 'audit-filter-since' });
  const until = h('input', { name: 'until', type: 'datetime-local', testid: 'audit-filter-until' });
  const errors = errorBox('audit-error');
  const out = h('div', { testid: 'audit-list' });
  const more = h('button', { type: 'button', testid: 'audit-more', hidden: true }, 'More');
  const verifyOut = h('div', { testid: 'audit-verify-result', role: 'status' });
  const verify = h('button', { type: 'button', testid: 'audit-verify' }, 'Verify chain');
  const form = h('form', { class: 'toolbar', testid: 'audit-filter-form', 'aria-label': 'Filter audit records' },
    field('Principal', principal, { errorFor: 'principal' }),
    field('After seq', afterSeq, { errorFor: 'after_seq' }),
    field('Resource contains (this page)', resource),
    field('From (this page)', since),
    field('To (this page)', until),
    h('button', { type: 'submit', class: 'primary', testid: 'audit-filter-submit' }, 'List'));
  main.append(h('h1', {}, 'Audit'));
  if (!can('/tai.v1.Governor/ListAuditRecords')) {
    main.append(h('p', { class: 'muted', testid: 'audit-role-note' }, 'The audit trail is for admins: the API will refuse this page to your role.'));
  }
  // Shown to admins only, as the API's role table says (the API refuses others anyway).
  if (can('/tai.v1.Governor/VerifyAuditLog')) main.append(h('div', { class: 'toolbar' }, verify), verifyOut);
  main.append(form, errors, out, more);

  let rows = [];
  const pages = pager('/v1/audit/records', 'records',
    () => ({ principal: principal.value.trim(), after_seq: afterSeq.value, page_size: 200 }), more);
  async function fetchPage(reset) {
    clearErrors(form, errors);
    try {
      rows = await pages(reset);
      draw();
    } catch (err) {
      showError(errors, err, form);
    }
  }

  // Resource and time are not filters of ListAuditRecords: they apply to the records fetched.
  function draw() {
    const term = resource.value.trim().toLowerCase();
    const from = localInputToDate(since.value);
    const to = localInputToDate(until.value);
    const shown = rows.filter((r) => {
      if (term && !(r.resource || '').toLowerCase().includes(term)) return false;
      const at = nsToDate(r.time_ns);
      if (from && at && at < from) return false;
      if (to && at && at > to) return false;
      return true;
    });
    replace(out,
      h('p', { class: 'muted', testid: 'audit-count' }, `${shown.length} of ${rows.length} fetched records shown.`),
      table([
        { title: 'Seq', cell: (r) => String(r.seq) },
        { title: 'Time', cell: (r) => timeEl(r.time_ns) },
        { title: 'Principal', cell: (r) => r.principal },
        { title: 'Action', cell: (r) => h('code', {}, r.action) },
        { title: 'Resource', cell: (r) => r.resource || '—' },
        { title: 'Outcome', cell: (r) => badge(r.outcome) },
        { title: 'Reason', cell: (r) => r.reason || '—' },
        { title: 'Service', cell: (r) => r.service },
      ], shown, { testid: 'audit-table', rowTestid: (r) => `audit-row-${r.seq}`, empty: 'No record.' }));
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    fetchPage(true);
  });
  for (const input of [resource, since, until]) input.addEventListener('input', draw);
  more.addEventListener('click', () => fetchPage(false));
  verify.addEventListener('click', async () => {
    verify.disabled = true;
    replace(verifyOut, h('p', { class: 'muted' }, 'Verifying…'));
    try {
      const r = await api('GET', '/v1/audit:verify');
      replace(verifyOut, r.intact
        ? h('p', {}, badge('intact', 'audit-verify-state'), ` ${r.checked} records checked.`)
        : h('p', {}, badge('broken', 'audit-verify-state'), ` first broken seq `,
          h('strong', { testid: 'audit-verify-first-broken' }, String(r.first_broken_seq)), `: ${r.reason} (${r.checked} records checked).`));
    } catch (err) {
      const box = h('div', { class: 'error', role: 'alert' });
      showError(box, err);
      replace(verifyOut, box);
    } finally {
      verify.disabled = false;
    }
  });
  fetchPage(true);
  return () => {};
}

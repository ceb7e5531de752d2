// Small DOM helpers. Data only ever goes into the page as text (textContent, attribute values),
// never through innerHTML, so nothing the API returns can become markup.

/**
 * Creates an element. `attrs`: `class`, `text`, `testid` (-> data-testid), `on<event>`
 * functions (addEventListener), booleans (set when true), anything else as an attribute.
 * Children: nodes, strings (text nodes), arrays, null/undefined/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'testid') el.dataset.testid = value;
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** int64 nanoseconds (a JSON string or number) to a Date; null for 0 or empty. */
export function nsToDate(ns) {
  if (ns === undefined || ns === null || ns === '' || ns === '0' || ns === 0) return null;
  const ms = Number(BigInt(String(ns)) / 1000000n);
  return new Date(ms);
}

/** A Date (or ms) to int64 nanoseconds as a string, for the API's *_ns fields. */
export function dateToNs(date) {
  const ms = date instanceof Date ? date.getTime() : Number(date);
  return (BigInt(Math.round(ms)) * 1000000n).toString();
}

/** A <time>: the browser's zone as text, the UTC time on hover. "—" for no time. */
export function timeEl(ns, testid) {
  const date = nsToDate(ns);
  if (!date) return h('span', { class: 'muted', testid }, '—');
  const iso = date.toISOString();
  return h('time', { datetime: iso, title: `${iso.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}`, testid },
    date.toLocaleString());
}

/** An enum name without its prefix, for display: ACTION_STATUS_PENDING -> PENDING. */
export function enumLabel(value, prefix) {
  const text = String(value ?? '');
  return prefix && text.startsWith(prefix) ? text.slice(prefix.length) : text;
}

/** A status pill whose class follows the value (styled in app.css). */
export function badge(text, testid) {
  const cls = String(text).toLowerCase().replace(/[^a-z_]/g, '');
  return h('span', { class: ['badge', `badge-${cls}`], testid }, text);
}

/** A labelled form control. The error slot under it receives the field's violations. */
export function field(labelText, control, { errorFor, hint } = {}) {
  if (!control.id) control.id = uniqueId('f');
  const slot = h('p', { class: 'field-error', 'data-error-for': errorFor || control.name || '', hidden: true });
  slot.id = uniqueId('err');
  control.setAttribute('aria-describedby', slot.id);
  return h('div', { class: 'field' },
    h('label', { for: control.id }, labelText),
    control,
    hint ? h('p', { class: 'hint' }, hint) : null,
    slot);
}

let counter = 0;
export function uniqueId(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** A table from column definitions [{title, cell(row) -> node|string}]. */
export function table(columns, rows, { testid, rowTestid, caption, empty = 'Nothing to show.' } = {}) {
  if (!rows.length) return h('p', { class: 'muted', testid: testid ? `${testid}-empty` : undefined }, empty);
  return h('table', { testid },
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.title)))),
    h('tbody', {}, rows.map((row) => h('tr', { testid: rowTestid ? rowTestid(row) : undefined },
      columns.map((c) => h('td', {}, c.cell(row)))))));
}

/** Key/value pairs as a definition list. */
export function definitionList(pairs, testid) {
  return h('dl', { class: 'kv', testid }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** A map (object) as "k=v, k=v" text. */
export function mapText(obj) {
  const entries = Object.entries(obj || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(', ') : '—';
}

/**
 * A modal confirmation (<dialog>) with an optional reason field. Resolves with
 * {reason} when confirmed, null when cancelled. `run(reason)` (optional) is awaited before the
 * dialog closes: an error it throws is shown inside the dialog, which stays open.
 */
export function confirmDialog({ title, message, confirmLabel = 'Confirm', reason = null, testid = 'confirm', run, extra }) {
  return new Promise((resolve) => {
    const reasonInput = reason
      ? h('textarea', { name: reason.name || 'reason', rows: 3, required: reason.required, testid: `${testid}-reason` })
      : null;
    const errorBox = h('div', { class: 'error', role: 'alert', hidden: true, testid: `${testid}-error` });
    const cancel = h('button', { type: 'button', class: 'secondary', testid: `${testid}-cancel` }, 'Cancel');
    const ok = h('button', { type: 'submit', class: 'primary', testid: `${testid}-ok` }, confirmLabel);
    const form = h('form', { method: 'dialog' },
      h('h2', {}, title),
      message ? h('p', {}, message) : null,
      extra || null,
      reasonInput ? field(reason.label || (reason.required ? 'Reason (required)' : 'Reason'), reasonInput, { errorFor: reason.name || 'reason' }) : null,
      errorBox,
      h('div', { class: 'buttons' }, cancel, ok));
    const dialog = h('dialog', { testid, 'aria-label': title }, form);
    let settled = false;
    const finish = (value) => {
      if (settled) return;
      settled = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    cancel.addEventListener('click', () => finish(null));
    dialog.addEventListener('cancel', () => finish(null));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const value = reasonInput ? reasonInput.value.trim() : '';
      if (reason && reason.required && !value) {
        showFieldErrors(form, [{ field: reason.name || 'reason', description: 'required' }], errorBox);
        reasonInput.focus();
        return;
      }
      if (run) {
        ok.disabled = true;
        try {
          await run(value);
        } catch (err) {
          ok.disabled = false;
          showError(errorBox, err, form);
          return;
        }
      }
      finish({ reason: value });
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    (reasonInput || ok).focus();
  });
}

/**
 * Shows an error: its message in `box`, and each field violation under its field in `form`
 * (an element with data-error-for equal to the field's path or its last segment). Violations
 * with no field on screen are listed in `box`, so none is lost.
 */
export function showError(box, err, form) {
  const violations = (err && err.fieldViolations) || [];
  const unplaced = form ? showFieldErrors(form, violations, null) : violations;
  const message = err && err.message ? err.message : String(err);
  replace(box,
    h('p', {}, err && err.status && !message.startsWith('HTTP ') ? `${message} (HTTP ${err.status})` : message),
    unplaced.length ? h('ul', {}, unplaced.map((v) => h('li', {}, `${v.field}: ${v.description}`))) : null);
  box.hidden = false;
}

/** Puts violations under their fields; returns those with no field on screen. */
export function showFieldErrors(form, violations, box) {
  clearErrors(form);
  const unplaced = [];
  for (const v of violations) {
    const slot = findSlot(form, v.field);
    if (slot) {
      slot.textContent = v.description;
      slot.hidden = false;
      const control = slot.parentElement && slot.parentElement.querySelector('input, textarea, select');
      if (control) control.setAttribute('aria-invalid', 'true');
    } else {
      unplaced.push(v);
    }
  }
  if (box && unplaced.length) {
    replace(box, h('ul', {}, unplaced.map((v) => h('li', {}, `${v.field}: ${v.description}`))));
    box.hidden = false;
  }
  return unplaced;
}

function findSlot(form, fieldPath) {
  const slots = [...form.querySelectorAll('[data-error-for]')];
  const exact = slots.find((s) => s.dataset.errorFor && s.dataset.errorFor === fieldPath);
  if (exact) return exact;
  const last = String(fieldPath).split('.').pop();
  return slots.find((s) => s.dataset.errorFor && s.dataset.errorFor.split('.').pop() === last) || null;
}

/** Hides every field error in a form (and the general box, if given). */
export function clearErrors(form, box) {
  for (const slot of form.querySelectorAll('[data-error-for]')) {
    slot.textContent = '';
    slot.hidden = true;
  }
  for (const control of form.querySelectorAll('[aria-invalid]')) control.removeAttribute('aria-invalid');
  if (box) {
    box.replaceChildren();
    box.hidden = true;
  }
}

/** An empty, hidden error box for a page or form. */
export function errorBox(testid) {
  return h('div', { class: 'error', role: 'alert', hidden: true, testid });
}

/** A status line for "saved", "3 loaded", etc. */
export function notice(testid) {
  return h('p', { class: 'notice', role: 'status', 'aria-live': 'polite', testid });
}

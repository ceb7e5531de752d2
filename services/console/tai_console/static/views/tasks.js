// Tasks and schedules: upcoming, running and failed tasks (ListTasks), one task's attempts and
// errors (GetTaskStatus) with Cancel; recurring tasks with their next runs and Pause, Resume,
// Trigger now and Backfill.

import { api } from '../api.js';
import {
  badge, confirmDialog, dateToNs, definitionList, enumLabel, errorBox, field, h, mapText, notice, replace, showError, table, timeEl,
} from '../dom.js';
import { can } from '../roles.js';
import { localInputToDate, seconds } from './common.js';

const SECTIONS = [
  ['pending', 'Upcoming'],
  ['running', 'Running'],
  ['failed', 'Failed'],
];

export function render(main) {
  const errors = errorBox('tasks-error');
  const done = notice('tasks-notice');
  const detail = h('div', { testid: 'task-detail' });
  const sectionsEl = h('div', { testid: 'tasks-sections' });
  const schedulesEl = h('div', { testid: 'schedules-list' });
  const refresh = h('button', { type: 'button', testid: 'tasks-refresh', onclick: () => load() }, 'Refresh');
  main.append(h('h1', {}, 'Tasks and schedules'), h('div', { class: 'toolbar' }, refresh), errors, done, detail,
    h('h2', {}, 'Schedules'), schedulesEl, sectionsEl);

  async function load() {
    errors.hidden = true;
    try {
      const lists = await Promise.all(SECTIONS.map(([status]) => api('GET', '/v1/tasks', { query: { status, page_size: 200 } })));
      // Schedules are listed under their own heading: neither shown nor counted here.
      const oneOff = lists.map((list) => list.tasks.filter((t) => !t.cron_schedule));
      replace(sectionsEl, SECTIONS.map(([status, title], i) => h('section', { 'aria-label': `${title} tasks`, testid: `tasks-${status}` },
        h('h2', {}, `${title} (${oneOff[i].length}${lists[i].next_page_token ? '+' : ''})`),
        taskTable(oneOff[i], `tasks-${status}-table`))));
      // Recurring tasks keep status "pending" between runs; ListTasks has no filter for them.
      const all = await api('GET', '/v1/tasks', { query: { page_size: 1000 } });
      drawSchedules(all.tasks.filter((t) => t.cron_schedule && !t.parent_task_id));
    } catch (err) {
      showError(errors, err);
    }
  }

  function taskTable(tasks, testid) {
    return table([
      { title: 'Task', cell: (t) => h('button', { type: 'button', class: 'link', testid: `task-open-${t.task_id}`, 'aria-label': `Details of task ${t.task_id}`, onclick: () => openTask(t.task_id) }, t.task_id) },
      { title: 'Type', cell: (t) => t.task_type },
      { title: 'Status', cell: (t) => badge(t.status) },
      { title: 'Scheduled', cell: (t) => timeEl(t.scheduled_time_ns) },
      { title: 'Next', cell: (t) => timeEl(t.next_run_ns) },
      { title: 'Attempts', cell: (t) => String((t.attempts || []).length) },
      { title: 'Error', cell: (t) => t.error_message || '—' },
      { title: 'Origin', cell: (t) => t.run_origin || '—' },
    ], tasks, { testid, rowTestid: (t) => `task-row-${t.task_id}`, empty: 'None.' });
  }

  async function openTask(taskId) {
    replace(detail, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const t = await api('GET', `/v1/tasks/${encodeURIComponent(taskId)}`);
      // A schedule's runs finish in moments and leave the status sections: listed here.
      const runs = t.cron_schedule && !t.parent_task_id
        ? (await api('GET', '/v1/tasks', { query: { parent_task_id: t.task_id, page_size: 50 } })).tasks
        : null;
      const cancellable = ['pending', 'running'].includes(t.status) && can('/tai.v1.Scheduler/CancelTask');
      replace(detail, h('section', { class: 'panel', 'aria-label': `Task ${t.task_id}` },
        h('h2', {}, `Task ${t.task_id}`),
        definitionList([
          ['Type', t.task_type],
          ['Status', badge(t.status, 'task-detail-status')],
          ['Error', t.error_message || '—'],
          ['Parameters', mapText(t.parameters)],
          ['Result', mapText(t.result)],
          ['Priority', String(t.priority)],
          ['Created', timeEl(t.created_at_ns)],
          ['Scheduled', timeEl(t.scheduled_time_ns)],
          ['Started', timeEl(t.started_at_ns)],
          ['Completed', timeEl(t.completed_at_ns)],
          ['Next', timeEl(t.next_run_ns)],
          ['Created by', t.created_by || '—'],
          ['Timeout', seconds(t.timeout_seconds)],
          t.parent_task_id ? ['Schedule', t.parent_task_id] : null,
          t.cron_schedule ? ['Cron', `${t.cron_schedule} (${t.time_zone || 'UTC'})`] : null,
        ], 'task-detail-fields'),
        h('h3', {}, 'Attempts'),
        table([
          { title: '#', cell: (a) => String(a.attempt) },
          { title: 'Started', cell: (a) => timeEl(a.started_at_ns) },
          { title: 'Ended', cell: (a) => timeEl(a.ended_at_ns) },
          { title: 'Outcome', cell: (a) => badge(a.outcome || 'running') },
          { title: 'Error', cell: (a) => a.error_message || '—' },
          { title: 'Worker', cell: (a) => a.worker || '—' },
        ], t.attempts || [], { testid: 'task-attempts-table', empty: 'No attempt yet.' }),
        runs ? [h('h3', {}, 'Runs'), taskTable(runs, 'schedule-runs-table')] : null,
        h('div', { class: 'buttons' },
          cancellable ? h('button', { type: 'button', class: 'danger', testid: 'task-cancel', onclick: async () => {
            const result = await confirmDialog({
              title: `Cancel task ${t.task_id}?`, confirmLabel: 'Cancel task', testid: 'task-cancel-confirm',
              reason: { name: 'reason', label: 'Reason', required: false },
              run: (reason) => api('POST', `/v1/tasks/${encodeURIComponent(t.task_id)}:cancel`, { body: { reason } }),
            });
            if (result) {
              done.textContent = `Task ${t.task_id} cancelled.`;
              openTask(t.task_id);
              load();
            }
          } }, 'Cancel task') : null,
          h('button', { type: 'button', testid: 'task-detail-close', onclick: () => replace(detail) }, 'Close'))));
    } catch (err) {
      replace(detail);
      showError(errors, err);
    }
  }

  function scheduleAction(t, verb, label, options = {}) {
    return h('button', { type: 'button', testid: `schedule-${verb}-${t.task_id}`, 'aria-label': `${label} ${t.task_id}`, onclick: async () => {
      const result = await confirmDialog({
        title: `${label}: ${t.task_id}?`, message: options.message, confirmLabel: label, testid: `schedule-${verb}-confirm`,
        reason: options.note ? { name: 'note', label: 'Note', required: false } : null,
        extra: options.extra ? options.extra.el : null,
        run: (note) => api('POST', `/v1/tasks/${encodeURIComponent(t.task_id)}:${verb}`,
          { body: options.extra ? options.extra.body() : options.note ? { note } : {} }),
      });
      if (result) {
        done.textContent = `${label}: ${t.task_id} done.`;
        load();
      }
    } }, label);
  }

  function backfillFields() {
    const start = h('input', { type: 'datetime-local', name: 'start_ns', required: true, testid: 'backfill-start' });
    const end = h('input', { type: 'datetime-local', name: 'end_ns', required: true, testid: 'backfill-end' });
    const overlap = h('select', { name: 'overlap_policy', testid: 'backfill-overlap' },
      ['OVERLAP_POLICY_UNSPECIFIED', 'OVERLAP_POLICY_SKIP', 'OVERLAP_POLICY_BUFFER_ONE', 'OVERLAP_POLICY_BUFFER_ALL']
        .map((o) => h('option', { value: o }, o === 'OVERLAP_POLICY_UNSPECIFIED' ? "the schedule's own" : enumLabel(o, 'OVERLAP_POLICY_'))));
    const el = h('div', {},
      field('Start (your time zone)', start, { errorFor: 'start_ns' }),
      field('End, exclusive (your time zone)', end, { errorFor: 'end_ns' }),
      field('Overlap policy', overlap, { errorFor: 'overlap_policy' }));
    const ns = (input) => {
      const date = localInputToDate(input.value);
      return date ? dateToNs(date) : '0';
    };
    return { el, body: () => ({ start_ns: ns(start), end_ns: ns(end), overlap_policy: overlap.value }) };
  }

  function drawSchedules(schedules) {
    const canPause = can('/tai.v1.Scheduler/PauseSchedule');
    replace(schedulesEl, table([
      { title: 'Schedule', cell: (t) => h('button', { type: 'button', class: 'link', testid: `task-open-${t.task_id}`, 'aria-label': `Details of schedule ${t.task_id}`, onclick: () => openTask(t.task_id) }, t.task_id) },
      { title: 'Type', cell: (t) => t.task_type },
      { title: 'Cron', cell: (t) => h('code', {}, `${t.cron_schedule} (${t.time_zone || 'UTC'})`) },
      { title: 'State', cell: (t) => (t.paused ? h('span', {}, badge('paused'), ` by ${t.paused_by}${t.pause_note ? `: ${t.pause_note}` : ''}`) : badge('active')) },
      { title: 'Next', cell: (t) => timeEl(t.next_run_ns) },
      { title: 'Skipped', cell: (t) => mapText(t.skipped_runs) },
      { title: 'Backfill', cell: (t) => (t.backfill && t.backfill.remaining ? `${t.backfill.remaining} left` : '—') },
      { title: 'Next runs', cell: (t) => upcomingCell(t) },
      { title: 'Control', cell: (t) => (canPause ? h('div', { class: 'buttons' },
        t.paused
          ? scheduleAction(t, 'resume', 'Resume', { note: true, message: 'It fires again from now; the occurrences missed while paused are skipped.' })
          : scheduleAction(t, 'pause', 'Pause', { note: true, message: 'It fires nothing until resumed; runs not started are cancelled.' }),
        scheduleAction(t, 'trigger', 'Trigger now', { message: 'One run now, outside the cadence.' }),
        scheduleAction(t, 'backfill', 'Backfill', { message: 'Runs the occurrences of the window that have no run yet.', extra: backfillFields() }))
        : '—') },
    ], schedules, { testid: 'schedules-table', rowTestid: (t) => `schedule-row-${t.task_id}`, empty: 'No recurring task.' }));
  }

  function upcomingCell(t) {
    const slot = h('div', { testid: `schedule-upcoming-${t.task_id}` });
    const show = h('button', { type: 'button', testid: `schedule-upcoming-open-${t.task_id}`, 'aria-label': `Next runs of ${t.task_id}`, onclick: async () => {
      try {
        const r = await api('GET', `/v1/tasks/${encodeURIComponent(t.task_id)}:upcoming`, { query: { count: 5 } });
        replace(slot, h('ul', {}, (r.runs || []).map((run) => h('li', {}, timeEl(run.scheduled_time_ns), h('span', { class: 'muted' }, ` (${run.local_time})`)))),
          r.paused ? h('p', { class: 'hint' }, 'Paused: where it would fire if resumed now.') : null);
      } catch (err) {
        const box = h('div', { class: 'error', role: 'alert' });
        showError(box, err);
        replace(slot, box);
      }
    } }, 'Show');
    slot.append(show);
    return slot;
  }

  load();
  return () => {};
}

// The audit trail: every change, newest first, a page at a time (GET /v1/audit).

import * as api from './api.js';
import { el, append, replace, when } from './dom.js';

const PAGE_SIZE = 25;

function detail(item) {
  const parts = [];
  if (item.before !== null && item.before !== undefined) parts.push(el('h3', {}, 'Before'), el('pre', {}, JSON.stringify(item.before, null, 2)));
  if (item.after !== null && item.after !== undefined) parts.push(el('h3', {}, 'After'), el('pre', {}, JSON.stringify(item.after, null, 2)));
  if (!parts.length) return '';
  return el('details', {}, el('summary', {}, 'Before and after'), parts);
}

export async function renderAudit(main) {
  const pages = [null];  // the `before` cursor of each page shown so far
  const body = el('tbody');
  const status = el('p', { role: 'status', class: 'meta', id: 'audit-status' });
  const nav = el('div', { class: 'buttons pager' });
  replace(main, el('h1', {}, 'Audit trail'),
    el('p', { class: 'lead' }, 'Every change, newest first: who, when, what, with secret values redacted.'),
    el('table', { class: 'list', id: 'audit-list' },
      el('caption', {}, 'Audit events'),
      el('thead', {}, el('tr', {}, ['When', 'Who', 'Action', 'Target', 'Details'].map((h) => el('th', { scope: 'col' }, h)))),
      body),
    status, nav);

  async function show(index) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (pages[index]) query.set('before', String(pages[index]));
    const answer = await api.get(`/v1/audit?${query}`);
    if (!answer.ok) {
      replace(status, `The audit trail could not be read: ${answer.detail} (${answer.code})`);
      return;
    }
    replace(body, answer.body.items.map((item) => el('tr', {},
      el('td', {}, when(item.at)), el('td', {}, item.actor), el('td', {}, item.action), el('td', {}, item.target || ''),
      el('td', {}, detail(item)))));
    pages.length = index + 1;
    if (answer.body.next_before) pages.push(answer.body.next_before);
    replace(status, answer.body.items.length ? `Page ${index + 1}.` : 'Nothing has been changed yet.');
    replace(nav);
    if (index > 0) {
      const newer = el('button', { type: 'button', class: 'secondary', id: 'audit-newer' }, 'Newer events');
      newer.addEventListener('click', () => show(index - 1));
      append(nav, newer);
    }
    if (answer.body.next_before) {
      const older = el('button', { type: 'button', class: 'secondary', id: 'audit-older' }, 'Older events');
      older.addEventListener('click', () => show(index + 1));
      append(nav, older);
    }
  }
  await show(0);
}

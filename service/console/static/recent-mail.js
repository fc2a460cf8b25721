// Recent mail: the delivery log, newest first, for one tenant or all, a page at a time (GET /v1/messages).

import * as api from './api.js';
import { el, append, replace, field, when } from './dom.js';
import { TENANT_ID } from './tenants.js';
import { humanise } from './settings-fields.js';

const PAGE_SIZE = 25;
/** Each outcome in words, with a mark so that it never rests on colour alone. */
const OUTCOMES = {
  sending: ['Sending', '\u2026', ''],
  sent: ['Sent', '\u2714', 'ok'],
  rejected: ['Refused by the server', '\u2716', 'bad'],
  unavailable: ['Server unavailable', '\u2716', 'bad'],
  credential_unavailable: ['Credential unavailable', '\u2716', 'bad'],
  failed: ['Failed', '\u2716', 'bad'],
};

function outcome(item) {
  const [label, mark, tone] = OUTCOMES[item.outcome] || [item.outcome, '', ''];
  const refused = item.outcome === 'sent' && item.rejected_count
    ? el('span', { class: 'meta block' }, `${item.rejected_count} recipient${item.rejected_count === 1 ? '' : 's'} refused`)
    : null;
  return [el('span', { class: tone || null, dataset: { outcome: item.outcome } }, el('span', { 'aria-hidden': 'true' }, mark ? `${mark} ` : ''), label),
    item.error_code ? el('span', { class: 'meta block' }, item.error_code) : null, refused];
}

function reply(smtp) {
  if (!smtp || (smtp.code === null && !smtp.message)) return el('span', { class: 'meta' }, 'No reply');
  return [smtp.code, smtp.message].filter((part) => part !== null && part !== undefined && part !== '').join(' ');
}

function row(item) {
  const domains = item.recipient_domains || [];
  return el('tr', { dataset: { id: String(item.id) } },
    el('td', {}, when(item.at), el('span', { class: 'meta block' }, `by ${item.token_name}`)),
    el('td', {}, item.tenant === null ? el('span', { class: 'meta' }, 'System level') : item.tenant),
    el('td', { class: 'outcome' }, outcome(item)),
    el('td', {}, String(item.recipient_count ?? ''), domains.length ? el('span', { class: 'meta block' }, domains.join(', ')) : null),
    el('td', {}, item.notification ? humanise(item.notification) : el('span', { class: 'meta' }, 'None')),
    el('td', { class: 'message-id' }, item.message_id || ''),
    el('td', {}, item.channel === 'smtp' ? 'SMTP' : 'HTTP'),
    el('td', { class: 'reply' }, reply(item.smtp)));
}

export async function renderRecentMail(main, ctx) {
  // A token restricted to tenants reads one of its tenants at a time: it starts with the first.
  let tenant = ctx.tenants && ctx.tenants.length ? ctx.tenants[0] : null;
  const pages = [null];  // the `before` cursor of each page shown so far
  const input = el('input', { id: 'mail-tenant', type: 'text', spellcheck: 'false', autocomplete: 'off', value: tenant || '' });
  const hint = ctx.tenants
    ? `This token reads the messages of its tenants only: ${ctx.tenants.join(', ')}.`
    : 'A tenant id shows the messages sent with its settings; empty shows every message.';
  const form = el('form', { class: 'inline-form', novalidate: true },
    field({ id: 'mail-tenant', label: 'Tenant', hint, control: input }),
    el('div', { class: 'buttons' }, el('button', { type: 'submit', class: 'primary', id: 'mail-filter' }, 'Filter')));
  const body = el('tbody');
  const status = el('p', { role: 'status', class: 'meta', id: 'mail-status' });
  const nav = el('div', { class: 'buttons pager' });
  replace(main, el('h1', {}, 'Recent mail'),
    el('p', { class: 'lead' }, 'Every message sent through the service, newest first, with what the mail server answered. Subjects and bodies are never kept.'),
    form,
    el('table', { class: 'list deliveries', id: 'mail-list' },
      el('caption', {}, 'Messages'),
      el('thead', {}, el('tr', {}, ['Time', 'Tenant', 'Outcome', 'Recipients', 'Notification', 'Message-ID', 'Channel', 'Server reply']
        .map((h) => el('th', { scope: 'col' }, h)))),
      body),
    status, nav);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    const error = form.querySelector('#mail-tenant-error');
    if (value && !TENANT_ID.test(value)) {
      error.textContent = 'Enter a tenant id of letters, digits, ".", "_" and "-", starting with a letter or digit, or nothing for every message.';
      error.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    error.hidden = true;
    error.textContent = '';
    input.removeAttribute('aria-invalid');
    tenant = value || null;
    pages.length = 1;
    await show(0);
  });

  async function show(index) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (tenant) query.set('tenant', tenant);
    if (pages[index]) query.set('before', String(pages[index]));
    const answer = await api.get(`/v1/messages?${query}`);
    replace(nav);
    if (!answer.ok) {
      replace(body);
      replace(status, `The delivery log could not be read: ${answer.detail} (${answer.code})`);
      return;
    }
    replace(body, answer.body.items.map(row));
    pages.length = index + 1;
    if (answer.body.next_before) pages.push(answer.body.next_before);
    const scope = tenant ? ` for tenant ${tenant}` : '';
    const count = answer.body.items.length;
    replace(status, count
      ? `Page ${index + 1}${scope}: ${count} message${count === 1 ? '' : 's'}.`
      : index ? `No older messages${scope}.` : `No message has been sent${scope} yet.`);
    if (index > 0) {
      const newer = el('button', { type: 'button', class: 'secondary', id: 'mail-newer' }, 'Newer');
      newer.addEventListener('click', () => show(index - 1));
      append(nav, newer);
    }
    if (answer.body.next_before) {
      const older = el('button', { type: 'button', class: 'secondary', id: 'mail-older' }, 'Older');
      older.addEventListener('click', () => show(index + 1));
      append(nav, older);
    }
  }
  await show(0);
}

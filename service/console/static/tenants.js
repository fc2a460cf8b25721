// The Tenants page: the tenants that have an override (GET /v1/tenants), and opening any tenant by id.

import * as api from './api.js';
import { el, append, replace, field, when } from './dom.js';

export const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const PAGE_SIZE = 50;

export async function renderTenants(main) {
  const input = el('input', { id: 'tenant-id', type: 'text', spellcheck: 'false', autocomplete: 'off' });
  const form = el('form', { class: 'inline-form', novalidate: true },
    field({ id: 'tenant-id', label: 'Tenant', hint: 'A tenant id: letters, digits, ".", "_" and "-". Opening a tenant without an override starts one.', control: input }),
    el('div', { class: 'buttons' }, el('button', { type: 'submit', class: 'primary' }, 'Open')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const id = input.value.trim();
    const error = form.querySelector('#tenant-id-error');
    if (!TENANT_ID.test(id)) {
      error.textContent = 'Enter a tenant id of letters, digits, ".", "_" and "-", starting with a letter or digit.';
      error.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    location.hash = `#/tenants/${encodeURIComponent(id)}`;
  });
  const body = el('tbody');
  const table = el('table', { class: 'list', id: 'tenant-list' },
    el('caption', {}, 'Tenants with an override'),
    el('thead', {}, el('tr', {}, ['Tenant', 'Version', 'Saved', 'Saved by'].map((h) => el('th', { scope: 'col' }, h)))),
    body);
  const more = el('div', { class: 'buttons' });
  const status = el('p', { role: 'status', class: 'meta' });
  replace(main, el('h1', {}, 'Tenants'),
    el('p', { class: 'lead' }, 'A tenant overrides the system settings field by field. Open one to see which fields it inherits.'),
    form, table, status, more);

  async function load(after) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (after) query.set('after', after);
    const answer = await api.get(`/v1/tenants?${query}`);
    replace(more);
    if (!answer.ok) {
      replace(status, `The tenants could not be listed: ${answer.detail} (${answer.code})`);
      return;
    }
    for (const item of answer.body.tenants) {
      append(body, el('tr', {},
        el('td', {}, el('a', { href: `#/tenants/${encodeURIComponent(item.tenant)}` }, item.tenant)),
        el('td', {}, String(item.version)), el('td', {}, when(item.updated_at)), el('td', {}, item.updated_by)));
    }
    const shown = body.children.length;
    replace(status, shown ? `${shown} tenant${shown === 1 ? '' : 's'} shown.` : 'No tenant has an override yet.');
    if (answer.body.next_after) {
      const button = el('button', { type: 'button', class: 'secondary', id: 'more-tenants' }, 'More tenants');
      button.addEventListener('click', () => load(answer.body.next_after));
      append(more, button);
    }
  }
  await load(null);
}

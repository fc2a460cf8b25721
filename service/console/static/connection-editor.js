// Adding and editing a secret-manager connection: the form of its provider type, saved with PUT (If-Match when editing).

import * as api from './api.js';
import { el, append, replace, clear, field } from './dom.js';
import { buildObject } from './schema-form.js';

export const TYPE_NAMES = { internal: 'Internal secret manager', hashicorp_vault: 'HashiCorp Vault', azure_key_vault: 'Azure Key Vault', cyberark: 'CyberArk' };
/** Members of a read connection that are not part of its document: never sent back. */
const READ_ONLY = ['name', 'version', 'updated_at', 'updated_by'];

/** Every message of a problem's `errors`, with its dotted path: {"auth": {"role_id": ["..."]}} -> [["auth.role_id", "..."]]. */
function flatten(errors, prefix = []) {
  const out = [];
  for (const [key, value] of Object.entries(errors || {})) {
    const path = key === '_schema' ? prefix : [...prefix, key];
    if (Array.isArray(value)) {
      for (const item of value) {
        if (typeof item === 'string') out.push([path.join('.'), item]);
        else out.push(...flatten(item, path));
      }
    } else if (value && typeof value === 'object') out.push(...flatten(value, path));
    else out.push([path.join('.'), String(value)]);
  }
  return out;
}

/**
 * Opens the editor in `slot`: a new connection when `connection` is null, else that connection (its name and type fixed).
 * `onSaved(record)` runs after a successful save; Cancel just closes it.
 */
export async function openConnectionEditor(slot, { connection, etag, onSaved }) {
  const editing = Boolean(connection);
  const all = (await api.providerTypes()).filter((type) => type.connection_schema && (editing || type.source !== 'internal'));
  const summary = el('div', { class: 'error-summary', id: 'connection-error-summary', role: 'alert', tabindex: '-1', hidden: true });
  const name = el('input', { id: 'conn-name', type: 'text', spellcheck: 'false', autocomplete: 'off', value: editing ? connection.name : '', disabled: editing });
  const typeSelect = el('select', { id: 'conn-type', disabled: editing },
    all.map((type) => el('option', { value: type.source, selected: editing && connection.type === type.source }, TYPE_NAMES[type.source] || type.source)));
  const fields = el('div', { class: 'type-fields' });
  const save = el('button', { type: 'submit', class: 'primary' }, 'Save connection');
  const cancel = el('button', { type: 'button', class: 'secondary' }, 'Cancel');
  const title = editing ? `Edit connection "${connection.name}"` : 'Add connection';
  const form = el('form', { class: 'connection-form', id: 'connection-form', novalidate: true },
    el('h2', { id: 'connection-editor-title', tabindex: '-1' }, title),
    el('p', { class: 'hint' }, 'Credentials the service needs to reach the manager are given as references: an environment variable, a file or an internal secret, never the value itself.'),
    summary,
    field({ id: 'conn-name', label: 'Name', hint: editing ? 'A connection keeps its name: password references use it.' : 'Letters, digits, ".", "_" and "-". Password references name the connection by it.', control: name }),
    field({ id: 'conn-type', label: 'Type', control: typeSelect }),
    fields,
    el('div', { class: 'buttons' }, save, cancel));

  let built = null;
  const showType = () => {
    const type = all.find((candidate) => candidate.source === typeSelect.value);
    clear(fields);
    if (type.description) append(fields, el('p', { class: 'hint' }, type.description));
    const current = editing && connection.type === type.source ? connection : undefined;
    built = buildObject(fields, type.connection_schema, current, { skip: ['type', ...READ_ONLY] });
  };
  typeSelect.addEventListener('change', () => { clearErrors(); showType(); });
  showType();

  function clearErrors() {
    summary.hidden = true;
    clear(summary);
    for (const node of form.querySelectorAll('.field-error')) { node.hidden = true; node.textContent = ''; }
    for (const node of form.querySelectorAll('.has-error')) node.classList.remove('has-error');
    for (const node of form.querySelectorAll('[aria-invalid]')) node.removeAttribute('aria-invalid');
  }

  /** Each message beside the field it is about (the nearest one up its path), and in the summary, linked to it. */
  function showErrors(messages, detail) {
    const slots = new Map([['name', 'conn-name'], ['type', 'conn-type'], ...built.slots()]);
    const items = messages.map(([path, message]) => {
      let key = path;
      while (key && !slots.has(key)) key = key.includes('.') ? key.slice(0, key.lastIndexOf('.')) : '';
      const id = key ? slots.get(key) : null;
      const rest = key && path !== key ? `${path.slice(key.length + 1)}: ` : '';
      const control = id ? form.querySelector(`#${CSS.escape(id)}`) : null;
      const slotNode = id ? form.querySelector(`#${CSS.escape(id)}-error`) : null;
      if (slotNode) {
        slotNode.hidden = false;
        slotNode.textContent = `${slotNode.textContent ? `${slotNode.textContent} ` : ''}${rest}${message}`;
        slotNode.closest('.field').classList.add('has-error');
        control.setAttribute('aria-invalid', 'true');
      }
      const label = control ? form.querySelector(`label[for="${CSS.escape(id)}"]`) : null;
      const text = `${label ? `${label.textContent}: ` : (path ? `${path}: ` : '')}${rest}${message}`;
      if (!control) return el('li', {}, text);
      const link = el('a', { href: `#${id}` }, text);
      link.addEventListener('click', (event) => { event.preventDefault(); control.focus(); });
      return el('li', {}, link);
    });
    replace(summary, el('h2', {}, 'There is a problem'), el('p', {}, detail), el('ul', {}, items));
    summary.hidden = false;
    summary.focus();
  }

  cancel.addEventListener('click', () => clear(slot));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const connectionName = name.value.trim();
    if (!connectionName) {
      showErrors([['name', 'Enter a name for the connection.']], 'The connection was not saved.');
      return;
    }
    const document = { type: typeSelect.value, ...built.read() };
    save.disabled = true;
    const answer = await api.put(`/v1/secret-providers/${api.segment(connectionName)}`, document, { headers: editing && etag ? { 'If-Match': etag } : {} });
    save.disabled = false;
    if (answer.ok) {
      clear(slot);
      onSaved(answer.body);
      return;
    }
    if (answer.status === 422) showErrors(flatten(answer.body.errors), answer.detail);
    else if (answer.code === 'provider_not_found') showErrors([['name', answer.detail]], 'The connection was not saved.');
    else if (answer.status === 412) showErrors([['', 'Someone else changed this connection since it was opened: cancel and edit it again.']], answer.detail);
    else showErrors([['', `${answer.detail} (${answer.code})`]], 'The connection was not saved.');
  });

  replace(slot, form);
  form.querySelector('h2').focus();
}

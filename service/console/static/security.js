// The security team's pages: secret-manager connections (add, edit, delete, check, event key), cache invalidation, the internal store.

import * as api from './api.js';
import { el, append, replace, clear, field, when } from './dom.js';
import { TYPE_NAMES, openConnectionEditor } from './connection-editor.js';

function where(connection) {
  return connection.url || connection.vault_url || (connection.type === 'internal' ? 'this service' : '');
}

/** Creates (or replaces) a connection's event key and shows it once: nothing keeps it after this panel is gone. */
async function createEventKey(connection, panel) {
  const answer = await api.post(`/v1/secret-providers/${api.segment(connection.name)}/event-key`);
  if (!answer.ok) {
    replace(panel, el('div', { class: 'result failure', role: 'alert' }, `No event key was created for ${connection.name}: ${answer.detail} (${answer.code})`));
    return;
  }
  const address = new URL(answer.body.path, location.origin).href;
  const close = el('button', { type: 'button', class: 'secondary' }, 'Done');
  close.addEventListener('click', () => clear(panel));
  replace(panel, el('section', { class: 'event-key', id: 'event-key', role: 'status', 'aria-labelledby': 'event-key-title' },
    el('h2', { id: 'event-key-title' }, `Event key for "${connection.name}"`),
    el('p', { class: 'warning' }, 'Copy it now: it is shown only this once. Creating another replaces it, and this one stops working at once.'),
    el('dl', {},
      el('dt', {}, 'Key'), el('dd', {}, el('code', { id: 'event-key-value' }, answer.body.key)),
      el('dt', {}, 'Webhook address'), el('dd', {}, el('code', { id: 'event-key-address' }, address))),
    el('p', { class: 'hint' }, 'Subscribe this address (behind the service\'s public HTTPS name) to the vault\'s SecretNewVersionCreated events in Azure Event Grid.'),
    el('div', { class: 'buttons' }, close)));
  panel.querySelector('h2').setAttribute('tabindex', '-1');
  panel.querySelector('h2').focus();
}

/** Asks before deleting; a connection that settings still use is refused with the reason. */
function confirmDelete(connection, panel, onDeleted) {
  const confirm = el('button', { type: 'button', class: 'warning-button' }, 'Delete connection');
  const cancel = el('button', { type: 'button', class: 'secondary' }, 'Cancel');
  const outcome = el('div');
  cancel.addEventListener('click', () => clear(panel));
  confirm.addEventListener('click', async () => {
    confirm.disabled = true;
    const answer = await api.del(`/v1/secret-providers/${api.segment(connection.name)}`);
    confirm.disabled = false;
    if (answer.ok) onDeleted();
    else {
      const users = answer.body && answer.body.used_by ? ` Used by: ${answer.body.used_by.join(', ')}.` : '';
      replace(outcome, el('div', { class: 'result failure', role: 'alert' }, `Not deleted: ${answer.detail}${users} (${answer.code})`));
    }
  });
  replace(panel, el('section', { class: 'confirm-delete', 'aria-labelledby': 'delete-title' },
    el('h2', { id: 'delete-title', tabindex: '-1' }, `Delete connection "${connection.name}"?`),
    el('p', {}, 'Settings that name it could no longer resolve their password; the service refuses while any do.'),
    outcome, el('div', { class: 'buttons' }, confirm, cancel)));
  panel.querySelector('h2').focus();
}

export async function renderSecretManagers(main, ctx, notice = null) {
  const [answer, types] = await Promise.all([api.get('/v1/secret-providers'), api.providerTypes()]);
  if (!answer.ok) {
    replace(main, el('h1', {}, 'Secret managers'), el('div', { class: 'result failure', role: 'alert' }, `The connections could not be read: ${answer.detail} (${answer.code})`));
    return;
  }
  const publishes = new Set(types.filter((type) => type.publishes_events).map((type) => type.source));
  const connections = answer.body.items;
  const panel = el('div', { id: 'connection-panel' });
  const rerender = (message) => renderSecretManagers(main, ctx, message);
  const openEditor = async (connection) => {
    let etag = null;
    if (connection) {
      const current = await api.get(`/v1/secret-providers/${api.segment(connection.name)}`);
      if (!current.ok) {
        replace(panel, el('div', { class: 'result failure', role: 'alert' }, `The connection could not be read: ${current.detail} (${current.code})`));
        return;
      }
      [connection, etag] = [current.body, current.etag];
    }
    await openConnectionEditor(panel, {
      connection, etag,
      onSaved: (record) => rerender(`Connection "${record.name}" saved (version ${record.version}).`),
    });
  };
  const rows = connections.map((connection) => {
    const result = el('td', { class: 'check-cell', id: `check-result-${connection.name}` });
    const button = el('button', { type: 'button', class: 'check', dataset: { state: 'idle', connection: connection.name }, 'aria-label': `Check ${connection.name}` }, 'Check');
    button.addEventListener('click', async () => {
      button.disabled = true;
      button.dataset.state = 'busy';
      button.setAttribute('aria-busy', 'true');
      replace(result, 'Checking…');
      const check = await api.post(`/v1/secret-providers/${api.segment(connection.name)}/check`);
      button.disabled = false;
      button.setAttribute('aria-busy', 'false');
      if (!check.ok) {
        button.dataset.state = 'failure';
        replace(result, el('span', { role: 'alert' }, `Not checked: ${check.detail} (${check.code})`));
      } else if (check.body.ok) {
        button.dataset.state = 'success';
        replace(result, el('span', { class: 'ok', role: 'status' }, el('span', { 'aria-hidden': 'true' }, '\u2714 '), `Reachable (${check.body.elapsed_ms} ms)`));
      } else {
        button.dataset.state = 'failure';
        replace(result, el('span', { class: 'bad', role: 'alert' }, el('span', { 'aria-hidden': 'true' }, '\u2716 '),
          `${check.body.error.code}: ${check.body.error.message}`));
      }
      button.classList.toggle('success', button.dataset.state === 'success');
      button.classList.toggle('failure', button.dataset.state === 'failure');
    });
    const edit = el('button', { type: 'button', class: 'secondary', 'aria-label': `Edit ${connection.name}` }, 'Edit');
    edit.addEventListener('click', () => openEditor(connection));
    const actions = el('div', { class: 'row-actions' }, edit);
    if (connection.type !== 'internal') {
      const remove = el('button', { type: 'button', class: 'secondary', 'aria-label': `Delete ${connection.name}` }, 'Delete');
      remove.addEventListener('click', () => confirmDelete(connection, panel, () => rerender(`Connection "${connection.name}" deleted.`)));
      append(actions, remove);
    }
    if (publishes.has(connection.type)) {
      const key = el('button', { type: 'button', class: 'secondary', 'aria-label': `Create event key for ${connection.name}` }, 'Create event key');
      key.addEventListener('click', () => createEventKey(connection, panel));
      append(actions, key);
    }
    return el('tr', {},
      el('th', { scope: 'row' }, connection.name),
      el('td', {}, TYPE_NAMES[connection.type] || connection.type),
      el('td', {}, where(connection)),
      el('td', {}, (connection.allowed_secrets || []).join(', ') || 'none'),
      el('td', {}, button), result, el('td', {}, actions));
  });
  const add = el('button', { type: 'button', class: 'primary', id: 'add-connection' }, 'Add connection');
  add.addEventListener('click', () => openEditor(null));

  const provider = el('select', { id: 'invalidate-provider' }, el('option', { value: '' }, 'All connections'),
    connections.map((c) => el('option', { value: c.name }, c.name)));
  const secret = el('input', { id: 'invalidate-secret', type: 'text', spellcheck: 'false' });
  const done = el('div', { id: 'invalidate-status', role: 'status' });
  const form = el('form', { class: 'inline-form', novalidate: true },
    field({ id: 'invalidate-provider', label: 'Connection', control: provider }),
    field({ id: 'invalidate-secret', label: 'Secret (optional)', hint: 'As the connection names it (a Vault path, a Key Vault secret name). Empty: every secret of the connection.', control: secret }),
    el('div', { class: 'buttons' }, el('button', { type: 'submit', class: 'primary', id: 'invalidate' }, 'Invalidate cache')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {};
    if (provider.value) body.provider = provider.value;
    if (secret.value.trim()) {
      if (!provider.value) {
        replace(done, el('p', { class: 'bad' }, 'Pick the connection the secret belongs to.'));
        return;
      }
      body.secret = secret.value.trim();
    }
    const result = await api.post('/v1/secret-cache/invalidate', body);
    replace(done, result.ok
      ? el('p', { class: 'ok' }, `Cache invalidated: ${result.body.invalidated} cached value${result.body.invalidated === 1 ? '' : 's'} dropped here; every instance reads the manager again on its next request.`)
      : el('p', { class: 'bad' }, `Not invalidated: ${result.detail} (${result.code})`));
  });

  replace(main, el('h1', {}, 'Secret managers'),
    el('p', { class: 'lead' }, 'The connections the service reads SMTP passwords through. "Check" logs in to the manager now.'),
    el('div', { id: 'connection-status', role: 'status' }, notice ? el('p', { class: 'ok' }, notice) : null),
    el('div', { class: 'buttons' }, add),
    el('table', { class: 'list', id: 'connection-list' },
      el('caption', {}, 'Connections'),
      el('thead', {}, el('tr', {}, ['Name', 'Type', 'Where', 'Allowed secrets', 'Check', 'Result', 'Change'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows)),
    panel,
    el('section', { 'aria-labelledby': 'invalidate-title' },
      el('h2', { id: 'invalidate-title' }, 'Invalidate cache'),
      el('p', { class: 'hint' }, 'After rotating a secret in a manager, make every instance read it again now instead of when its cache expires.'),
      form, done));
}

/** The versions of one secret (GET /v1/secrets/{name}), read when first opened. */
function history(name) {
  const list = el('ol', { reversed: true, class: 'versions' });
  const details = el('details', { class: 'history' }, el('summary', { 'aria-label': `Versions of ${name}` }, 'Versions'), list);
  details.addEventListener('toggle', async () => {
    if (!details.open || list.children.length) return;
    const answer = await api.get(`/v1/secrets/${api.secretPath(name)}`);
    if (!answer.ok) {
      append(list, el('li', {}, `Not available: ${answer.detail} (${answer.code})`));
      return;
    }
    for (const version of answer.body.versions) {
      append(list, el('li', { value: version.version }, `${when(version.created_at)} by ${version.created_by}`));
    }
  });
  return details;
}

export async function renderSecrets(main) {
  const body = el('tbody');
  const status = el('div', { id: 'secret-status', role: 'status' });
  const name = el('input', { id: 'secret-name', type: 'text', spellcheck: 'false', autocomplete: 'off' });
  const value = el('input', { id: 'secret-new-value', type: 'password', autocomplete: 'new-password' });
  const form = el('form', { class: 'inline-form', novalidate: true },
    field({ id: 'secret-name', label: 'Name', hint: 'Letters, digits, ".", "_", "-" and "/" (smtp/relay). SMTP passwords must match the internal connection\'s allowed secrets (smtp/* by default).', control: name }),
    field({ id: 'secret-new-value', label: 'Value', hint: 'Stored encrypted; never shown again.', control: value }),
    el('div', { class: 'buttons' }, el('button', { type: 'submit', class: 'primary', id: 'new-version' }, 'New version')));

  async function load() {
    const answer = await api.get('/v1/secrets');
    if (!answer.ok) {
      replace(body, el('tr', {}, el('td', { colspan: 4 }, `The secrets could not be listed: ${answer.detail} (${answer.code})`)));
      return;
    }
    replace(body, answer.body.items.length
      ? answer.body.items.map((item) => {
        const pick = el('button', { type: 'button', class: 'link-button', 'aria-label': `New version of ${item.name}` }, item.name);
        pick.addEventListener('click', () => { name.value = item.name; value.focus(); });
        return el('tr', {}, el('th', { scope: 'row' }, pick), el('td', {}, String(item.current_version), history(item.name)),
          el('td', {}, when(item.updated_at)), el('td', {}, item.updated_by));
      })
      : el('tr', {}, el('td', { colspan: 4 }, 'The internal store holds no secret yet.')));
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const secretName = name.value.trim();
    if (!secretName || !value.value) {
      replace(status, el('p', { class: 'bad' }, 'Enter a name and a value.'));
      return;
    }
    const answer = await api.put(`/v1/secrets/${api.secretPath(secretName)}`, { value: value.value });
    value.value = '';
    if (answer.ok) {
      replace(status, el('p', { class: 'ok' }, `Version ${answer.body.current_version} of ${answer.body.name} saved.`));
      await load();
    } else {
      const errors = answer.body && answer.body.errors ? Object.values(answer.body.errors).flat().join(' ') : '';
      replace(status, el('p', { class: 'bad', role: 'alert' }, `Not saved: ${answer.detail} ${errors} (${answer.code})`));
    }
  });

  replace(main, el('h1', {}, 'Secrets'),
    el('p', { class: 'lead' }, 'The service\'s own encrypted store. A new version is a rotation: senders get it on their next request.'),
    el('table', { class: 'list', id: 'secret-list' },
      el('caption', {}, 'Internal secrets'),
      el('thead', {}, el('tr', {}, ['Name', 'Version', 'Updated', 'Updated by'].map((h) => el('th', { scope: 'col' }, h)))),
      body),
    el('section', { 'aria-labelledby': 'new-version-title' }, el('h2', { id: 'new-version-title' }, 'New version'), form, status));
  await load();
}

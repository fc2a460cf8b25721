// The dialog that sets a password (or an OAuth2 secret): typed in, or picked from a secret manager.

import * as api from './api.js';
import { el, append, replace, field } from './dom.js';

export const INPUT_TYPES = [
  ['plaintext', 'Input text'],
  ['internal', 'Internal secret manager'],
  ['hashicorp_vault', 'HashiCorp Vault'],
  ['azure_key_vault', 'Azure Key Vault'],
  ['cyberark', 'CyberArk'],
];
const OTHER = '\u0000other';

/** How a reference reads in the form: never a value. */
export function describeReference(ref) {
  if (!ref) return 'None';
  switch (ref.source) {
    case 'plaintext':
      return ref.value !== undefined ? 'New value typed in (saved encrypted when you submit)' : 'Set, stored encrypted (never shown again)';
    case 'internal':
      return `Internal secret manager: ${ref.secret}${ref.version ? ` (version ${ref.version})` : ''}`;
    case 'hashicorp_vault':
      return `HashiCorp Vault "${ref.provider}": ${ref.path}, key ${ref.key}${ref.version ? ` (version ${ref.version})` : ''}`;
    case 'azure_key_vault':
      return `Azure Key Vault "${ref.provider}": ${ref.secret}${ref.version ? ` (version ${ref.version})` : ''}`;
    case 'cyberark':
      return `CyberArk "${ref.provider}": safe ${ref.safe}, object ${ref.object}`;
    default:
      return `${ref.source}${ref.provider ? ` "${ref.provider}"` : ''}`;
  }
}

/**
 * Opens the dialog; `onChoose(reference)` gets the new reference when the user confirms.
 * `what` names the secret in the title ("password", "client secret").
 */
export async function openSecretDialog({ what, current, onChoose, multiline = false }) {
  const typeSelect = el('select', { id: 'secret-input-type' },
    INPUT_TYPES.map(([value, label]) => el('option', { value }, label)));
  const body = el('div', { class: 'dialog-body' });
  const error = el('p', { class: 'field-error', id: 'secret-dialog-error', role: 'alert', hidden: true });
  const useButton = el('button', { type: 'submit', class: 'primary' }, `Use this ${what}`);
  const cancel = el('button', { type: 'button', class: 'secondary' }, 'Cancel');
  const form = el('form', { method: 'dialog', novalidate: true },
    el('h2', { id: 'secret-dialog-title' }, `${current ? 'Change' : 'Add'} ${what}`),
    el('p', { class: 'hint' }, `Type the ${what} in, or pick a secret that a secret manager holds. A value typed in is stored encrypted and never shown again.`),
    field({ id: 'secret-input-type', label: 'Input type', control: typeSelect }),
    body, error,
    el('div', { class: 'buttons' }, useButton, cancel));
  const dialog = el('dialog', { class: 'secret-dialog', 'aria-labelledby': 'secret-dialog-title' }, form);
  document.body.append(dialog);

  let connections = null;
  let read = () => null;
  const types = await api.providerTypes();

  /** "Version" for a source whose manager keeps versions (its references take one); empty: the latest. */
  function versionField(container, source, same) {
    const type = types.find((candidate) => candidate.source === source);
    const schema = type && type.reference_schema.properties.version;
    if (!schema) return () => ({});
    const numeric = [].concat(schema.type).includes('integer');
    const { row, input } = textInput('secret-version', 'Version',
      `Empty: always the latest version. ${numeric ? 'A version number' : 'A version identifier'} pins that version, even after a rotation.`,
      same && same.version !== null && same.version !== undefined ? String(same.version) : '');
    append(container, row);
    return () => {
      const entered = input.value.trim();
      if (!entered) return { version: null };
      // What does not parse goes as typed: the service says why when the settings are checked or saved.
      return { version: numeric && /^\d+$/.test(entered) ? Number(entered) : entered };
    };
  }

  async function loadConnections() {
    if (connections) return connections;
    const answer = await api.get('/v1/secret-providers');
    connections = answer.ok ? answer.body.items : [];
    return connections;
  }

  function textInput(id, label, hint, value = '') {
    const input = el('input', { id, type: 'text', autocomplete: 'off', spellcheck: 'false', value });
    return { row: field({ id, label, hint, control: input }), input };
  }

  /** "Value": a picker of the names the connection lists, with free entry beside it. */
  async function valuePicker(container, connection, hint, initial) {
    replace(container, el('p', { class: 'loading', role: 'status' }, 'Listing the secrets this connection allows…'));
    const answer = await api.get(`/v1/secret-providers/${api.segment(connection)}/secrets`);
    if (!answer.ok || answer.body.names.length === 0) {
      const why = answer.ok
        ? 'The manager lists no secret that this connection allows: enter the name.'
        : answer.code === 'listing_not_supported'
          ? 'This manager cannot list its secrets: enter the name.'
          : `The secrets could not be listed (${answer.code}): enter the name.`;
      const { row, input } = textInput('secret-value', 'Value', `${why} ${hint}`, initial || '');
      replace(container, row);
      return () => input.value.trim();
    }
    const names = answer.body.names;
    const select = el('select', { id: 'secret-value' },
      names.map((name) => el('option', { value: name, selected: name === initial }, name)),
      el('option', { value: OTHER, selected: Boolean(initial) && !names.includes(initial) }, 'Enter another name…'));
    const other = textInput('secret-value-other', 'Secret name', hint, initial && !names.includes(initial) ? initial : '');
    const sync = () => { other.row.hidden = select.value !== OTHER; };
    select.addEventListener('change', sync);
    const note = answer.body.truncated ? el('p', { class: 'hint' }, 'Only the first 1,000 names are listed; enter another name if yours is not there.') : null;
    replace(container, field({ id: 'secret-value', label: 'Value', hint, control: select }), note, other.row);
    sync();
    return () => (select.value === OTHER ? other.input.value.trim() : select.value);
  }

  // A slower listing for an earlier choice must not overwrite the current one.
  let generation = 0;

  async function showType() {
    generation += 1;
    const mine = generation;
    const source = typeSelect.value;
    error.hidden = true;
    const same = current && current.source === source ? current : null;
    if (source === 'plaintext') {
      // A key file (a PEM, a key JSON) keeps its line breaks; it is shown while typed, never after.
      const input = multiline
        ? el('textarea', { id: 'secret-value', rows: 8, spellcheck: 'false', autocomplete: 'off' })
        : el('input', { id: 'secret-value', type: 'password', autocomplete: 'new-password' });
      const hint = multiline ? `The ${what} itself: paste the whole file.` : `The ${what} itself.`;
      replace(body, field({ id: 'secret-value', label: 'Value', hint, control: input }));
      read = () => (input.value ? { source: 'plaintext', value: input.value } : null);
      return;
    }
    if (source === 'internal') {
      const pick = el('div');
      replace(body, pick);
      const value = await valuePicker(pick, 'internal', 'A secret in the service\'s own encrypted store, kept by the security team.', same && same.secret);
      if (mine !== generation) return;
      const version = versionField(body, 'internal', same);
      read = () => (value() ? { source: 'internal', secret: value(), ...version() } : null);
      return;
    }
    const all = await loadConnections();
    if (mine !== generation) return;
    const ofType = all.filter((connection) => connection.type === source);
    if (ofType.length === 0) {
      replace(body, el('p', { class: 'notice' }, 'No connection of this type is configured. The security team registers secret managers on the "Secret managers" page.'));
      read = () => null;
      return;
    }
    const connectionSelect = el('select', { id: 'secret-connection' },
      ofType.map((connection) => el('option', { value: connection.name, selected: same && same.provider === connection.name }, connection.name)));
    const pick = el('div');
    const extra = el('div');
    replace(body, field({ id: 'secret-connection', label: 'Connection', control: connectionSelect }), pick, extra);
    let value = () => '';
    let key = null;
    if (source === 'hashicorp_vault') {
      key = textInput('secret-key', 'Key', 'The key inside the secret that holds the value.', (same && same.key) || 'password');
      append(extra, key.row);
    }
    const hints = {
      hashicorp_vault: 'The secret\'s path in the connection\'s KV mount.',
      azure_key_vault: 'The Key Vault secret\'s name.',
      cyberark: 'The safe and the object, as SAFE/OBJECT.',
    };
    const initial = same ? (same.path || same.secret || (same.safe ? `${same.safe}/${same.object}` : '')) : '';
    const load = async () => { value = await valuePicker(pick, connectionSelect.value, hints[source], initial); };
    connectionSelect.addEventListener('change', load);
    await load();
    if (mine !== generation) return;
    const version = versionField(extra, source, same);
    read = () => {
      const name = value();
      if (!name) return null;
      const provider = connectionSelect.value;
      if (source === 'hashicorp_vault') return { source, provider, path: name, key: key.input.value.trim() || 'password', ...version() };
      if (source === 'azure_key_vault') return { source, provider, secret: name, ...version() };
      const slash = name.indexOf('/');
      if (slash < 1) return { invalid: 'Enter the safe and the object as SAFE/OBJECT.' };
      return { source, provider, safe: name.slice(0, slash), object: name.slice(slash + 1) };
    };
  }

  typeSelect.addEventListener('change', showType);
  cancel.addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => dialog.remove());
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const reference = read();
    if (!reference || reference.invalid) {
      error.textContent = (reference && reference.invalid) || `Enter or pick the ${what}.`;
      error.hidden = false;
      return;
    }
    onChoose(reference);
    dialog.close();
  });
  if (current && INPUT_TYPES.some(([value]) => value === current.source)) typeSelect.value = current.source;
  dialog.showModal();
  await showType();
  typeSelect.focus();
}

// The settings form's fields: which the form shows, in which groups, their defaults, and one control per kind.

import { el } from './dom.js';

export const SECURITY = [['none', 'None'], ['starttls', 'STARTTLS'], ['ssl', 'SSL/TLS']];
export const FLOWS = [['microsoft', 'Microsoft Entra ID (Exchange Online)'], ['google', 'Google service account'], ['client_credentials', 'Client credentials (any OAuth2 server)']];
export const DEFAULTS = { security: 'starttls', timeout_seconds: 10, insecure_skip_verify: false, cc: [], bcc: [], preferred_notifications: [] };

/** The plain fields, in the order the form shows them, grouped. */
export const GROUPS = [
  ['Server', [
    { name: 'host', label: 'SMTP server', kind: 'text', hint: 'Host name or IP address of the mail server.' },
    { name: 'port', label: 'SMTP port', kind: 'integer', hint: 'Usually 587 (STARTTLS) or 465 (SSL/TLS).' },
    { name: 'security', label: 'SMTP type', kind: 'select', options: SECURITY },
    { name: 'timeout_seconds', label: 'Timeout (seconds)', kind: 'integer' },
    { name: 'insecure_skip_verify', label: 'Insecure skip TLS verify', kind: 'checkbox', hint: 'Accept any certificate. Only for tests: anyone on the path can read the password.' },
    { name: 'ca_certificate_pem', label: 'CA certificate (PEM)', kind: 'textarea', hint: 'Only for a server whose certificate a private CA issued.' },
  ]],
  ['Sender', [
    { name: 'from_email', label: 'From email', kind: 'text' },
    { name: 'from_name', label: 'From name', kind: 'text' },
    { name: 'reply_to', label: 'Reply-to', kind: 'text' },
  ]],
  ['Copies', [
    { name: 'cc', label: 'Mailto Cc', kind: 'list', hint: 'Addresses, comma separated, copied on the preferred notifications.' },
    { name: 'bcc', label: 'Mailto Bcc', kind: 'list', hint: 'Addresses, comma separated, blind-copied on the preferred notifications.' },
  ]],
];
export const CREDENTIAL_FIELDS = [
  { name: 'username', label: 'Username', kind: 'text' },
  { name: 'domain', label: 'Domain', kind: 'text', hint: 'Optional authentication domain: the login becomes DOMAIN\\username.' },
];
export const OAUTH_FIELDS = [
  { name: 'tenant_id', label: 'Tenant ID', flows: ['microsoft'] },
  { name: 'client_id', label: 'Client ID', flows: ['microsoft', 'client_credentials'] },
  { name: 'token_url', label: 'Token URL', flows: ['google', 'client_credentials'] },
  { name: 'scope', label: 'Scope', flows: ['microsoft', 'google', 'client_credentials'] },
  { name: 'authority_host', label: 'Authority host', flows: ['microsoft'] },
];
/** The members each flow takes (the service refuses any other). */
export const FLOW_FIELDS = {
  microsoft: ['tenant_id', 'client_id', 'client_secret', 'client_certificate', 'scope', 'authority_host'],
  google: ['service_account_key', 'token_url', 'scope'],
  client_credentials: ['token_url', 'client_id', 'client_secret', 'scope'],
};
export const OAUTH_SECRETS = [
  { name: 'client_secret', label: 'Client secret', what: 'client secret', flows: ['microsoft', 'client_credentials'],
    excludes: 'client_certificate' },
  // Microsoft takes a client secret or a certificate (a PEM with the private key and the certificate).
  { name: 'client_certificate', label: 'Client certificate (PEM)', what: 'client certificate', flows: ['microsoft'],
    excludes: 'client_secret', multiline: true },
  { name: 'service_account_key', label: 'Service account key', what: 'service account key', flows: ['google'],
    multiline: true },
];

export function humanise(name) {
  const text = name.replace(/_/g, ' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** One control with get/set, so the tenant form can swap system values in and out. */
export function control(spec, id) {
  let input;
  switch (spec.kind) {
    case 'select':
      input = el('select', { id }, spec.options.map(([value, label]) => el('option', { value }, label)));
      return { input, get: () => input.value, set: (v) => { input.value = v ?? spec.options[1][0]; } };
    case 'checkbox':
      input = el('input', { id, type: 'checkbox' });
      return { input, get: () => input.checked, set: (v) => { input.checked = Boolean(v); } };
    case 'textarea':
      input = el('textarea', { id, rows: 4, spellcheck: 'false' });
      return { input, get: () => input.value.trim() || null, set: (v) => { input.value = v ?? ''; } };
    case 'integer':
      input = el('input', { id, type: 'text', inputmode: 'numeric', class: 'short' });
      // Anything but digits goes to the service as typed, so its message says what is wrong.
      return { input, get: () => { const v = input.value.trim(); return v === '' ? null : /^\d+$/.test(v) ? Number(v) : v; }, set: (v) => { input.value = v ?? ''; } };
    case 'list':
      input = el('input', { id, type: 'text', spellcheck: 'false' });
      return { input, get: () => input.value.split(',').map((s) => s.trim()).filter(Boolean), set: (v) => { input.value = (v || []).join(', '); } };
    default:
      input = el('input', { id, type: 'text', spellcheck: 'false' });
      return { input, get: () => input.value.trim() || null, set: (v) => { input.value = v ?? ''; } };
  }
}

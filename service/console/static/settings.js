// The settings page, for the system level and for one tenant: the form, checks, submit with If-Match.

import * as api from './api.js';
import { el, append, replace, field, when } from './dom.js';
import { openSecretDialog, describeReference } from './secret-dialog.js';
import { setState, showResult, showRefusal } from './checks.js';

const READ_ONLY = ['version', 'updated_at', 'updated_by', 'warnings', 'inherited'];
const SECURITY = [['none', 'None'], ['starttls', 'STARTTLS'], ['ssl', 'SSL/TLS']];
const FLOWS = [['microsoft', 'Microsoft Entra ID (Exchange Online)'], ['google', 'Google service account'], ['client_credentials', 'Client credentials (any OAuth2 server)']];
const DEFAULTS = { security: 'starttls', timeout_seconds: 10, insecure_skip_verify: false, cc: [], bcc: [], preferred_notifications: [] };

/** The plain fields, in the order the form shows them, grouped. */
const GROUPS = [
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
const CREDENTIAL_FIELDS = [
  { name: 'username', label: 'Username', kind: 'text' },
  { name: 'domain', label: 'Domain', kind: 'text', hint: 'Optional authentication domain: the login becomes DOMAIN\\username.' },
];
const OAUTH_FIELDS = [
  { name: 'tenant_id', label: 'Tenant ID', flows: ['microsoft'] },
  { name: 'client_id', label: 'Client ID', flows: ['microsoft', 'client_credentials'] },
  { name: 'token_url', label: 'Token URL', flows: ['google', 'client_credentials'] },
  { name: 'scope', label: 'Scope', flows: ['microsoft', 'google', 'client_credentials'] },
  { name: 'authority_host', label: 'Authority host', flows: ['microsoft'] },
];
/** The members each flow takes (the service refuses any other). */
const FLOW_FIELDS = {
  microsoft: ['tenant_id', 'client_id', 'client_secret', 'client_certificate', 'scope', 'authority_host'],
  google: ['service_account_key', 'token_url', 'scope'],
  client_credentials: ['token_url', 'client_id', 'client_secret', 'scope'],
};
const OAUTH_SECRETS = [
  { name: 'client_secret', label: 'Client secret', what: 'client secret', flows: ['microsoft', 'client_credentials'],
    excludes: 'client_certificate' },
  // Microsoft takes a client secret or a certificate (a PEM with the private key and the certificate).
  { name: 'client_certificate', label: 'Client certificate (PEM)', what: 'client certificate', flows: ['microsoft'],
    excludes: 'client_secret', multiline: true },
  { name: 'service_account_key', label: 'Service account key', what: 'service account key', flows: ['google'],
    multiline: true },
];

function humanise(name) {
  const text = name.replace(/_/g, ' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** One control with get/set, so the tenant form can swap system values in and out. */
function control(spec, id) {
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

export async function renderSettings(main, ctx, tenant) {
  const isTenant = tenant !== null;
  const base = isTenant ? `/v1/tenants/${api.segment(tenant)}/smtp` : '/v1/smtp';
  const [types, systemAnswer, levelAnswer] = await Promise.all([
    api.get('/v1/notification-types'),
    api.get('/v1/smtp'),
    isTenant ? api.get(base) : Promise.resolve(null),
  ]);
  const own = isTenant ? levelAnswer : systemAnswer;
  if (own.status !== 200 && !(own.status === 404 && own.code !== 'tenant_not_found')) {
    replace(main, el('h1', {}, isTenant ? `Tenant ${tenant}` : 'System settings'),
      el('div', { class: 'result failure', role: 'alert' }, `The settings could not be read: ${own.detail} (${own.code})`));
    return;
  }
  const system = systemAnswer.status === 200 ? systemAnswer.body : null;
  const stored = own.status === 200 ? own.body : null;
  const editable = ctx.can('admin');
  const page = new SettingsPage(main, {
    tenant, base, system, stored, etag: own.etag, editable,
    notificationTypes: types.ok ? types.body.items.map((item) => item.name) : [],
  });
  page.render();
}

class SettingsPage {
  constructor(main, options) {
    Object.assign(this, options);
    this.main = main;
    this.isTenant = options.tenant !== null;
    this.rows = new Map();
    this.doc = this.stored ? Object.fromEntries(Object.entries(this.stored).filter(([k]) => !READ_ONLY.includes(k))) : {};
    this.password = this.doc.password === undefined ? null : this.doc.password;
    this.auth = this.doc.auth ? { ...this.doc.auth } : null;
  }

  inheritedValue(name) {
    if (name === 'auth_method') return ((this.system && this.system.auth) || { method: 'password' }).method;
    const value = this.system ? this.system[name] : undefined;
    return value === undefined ? DEFAULTS[name] : value;
  }

  /** A row for a plain field; on a tenant page it carries "Use system value" and the word "inherited". */
  row(spec, container) {
    const id = `field-${spec.name}`;
    const ctl = control(spec, id);
    const entry = { spec, ctl, inherit: null };
    let extra = null;
    if (this.isTenant) {
      const box = el('input', { type: 'checkbox', id: `inherit-${spec.name}`, class: 'inherit' });
      const tag = el('span', { class: 'inherited-tag', id: `inherited-${spec.name}` }, 'inherited');
      extra = el('div', { class: 'inherit-row' }, tag, el('label', { class: 'inline' }, box, ' Use system value'));
      entry.inherit = box;
      entry.tag = tag;
      box.addEventListener('change', () => { this.applyInherit(entry, true); this.changed(); });
    }
    const wrapper = field({ id, label: spec.label, hint: spec.hint, control: ctl.input, extra });
    if (spec.kind === 'checkbox') wrapper.classList.add('checkbox-field');
    append(container, wrapper);
    ctl.input.addEventListener('input', () => this.changed());
    ctl.input.addEventListener('change', () => this.changed());
    this.rows.set(spec.name, entry);
    const own = Object.prototype.hasOwnProperty.call(this.doc, spec.name);
    if (entry.inherit) entry.inherit.checked = !own;
    ctl.set(own ? this.doc[spec.name] : (this.isTenant ? this.inheritedValue(spec.name) : DEFAULTS[spec.name]));
    this.applyInherit(entry, false);
    return entry;
  }

  applyInherit(entry, fromUser) {
    if (!entry.inherit) {
      entry.ctl.input.disabled = !this.editable;
      return;
    }
    const inherited = entry.inherit.checked;
    entry.tag.hidden = !inherited;
    entry.ctl.input.disabled = inherited || !this.editable;
    entry.inherit.disabled = !this.editable;
    if (inherited && fromUser) entry.ctl.set(this.inheritedValue(entry.spec.name));
  }

  render() {
    const title = this.isTenant ? `Tenant "${this.tenant}"` : 'System settings';
    const intro = this.isTenant
      ? 'Fields marked "inherited" take their value from the system settings; untick "Use system value" to override one for this tenant.'
      : 'These settings apply to every tenant, except for the fields a tenant overrides.';
    const meta = this.stored
      ? `Version ${this.stored.version}, saved ${when(this.stored.updated_at)} by ${this.stored.updated_by}.`
      : this.isTenant ? 'This tenant has no override yet: it uses the system settings as they are.' : 'No system settings are saved yet.';
    this.summary = el('div', { class: 'connection-summary', id: 'connection-summary' });
    this.errorSummary = el('div', { class: 'error-summary', id: 'error-summary', role: 'alert', tabindex: '-1', hidden: true });
    this.saveStatus = el('div', { class: 'save-status', id: 'save-status', role: 'status' });
    this.saveAlert = el('div', { class: 'save-alert', id: 'save-alert', role: 'alert' });
    const form = el('form', { id: 'settings-form', novalidate: true });
    form.addEventListener('submit', (event) => { event.preventDefault(); this.askConfirm(); });

    const [serverGroup, senderGroup, copiesGroup] = GROUPS;
    const serverSet = el('fieldset', {}, el('legend', {}, serverGroup[0]));
    serverGroup[1].forEach((spec) => this.row(spec, serverSet));
    const senderSet = el('fieldset', {}, el('legend', {}, senderGroup[0]));
    senderGroup[1].forEach((spec) => this.row(spec, senderSet));
    const authSet = this.renderAuthentication();
    const copiesSet = el('fieldset', {}, el('legend', {}, copiesGroup[0]));
    copiesGroup[1].forEach((spec) => this.row(spec, copiesSet));
    append(copiesSet, this.renderNotifications());

    append(form, serverSet, senderSet, authSet, copiesSet);
    const actions = [];
    if (this.editable) {
      append(form, this.renderChecks());
      this.submitButton = el('button', { type: 'submit', class: 'primary', id: 'submit' }, 'Submit');
      this.confirmArea = el('div', { class: 'confirm', id: 'confirm-area' });
      actions.push(el('div', { class: 'buttons submit-row' }, this.submitButton), this.confirmArea);
    } else {
      actions.push(el('p', { class: 'notice' }, 'Read only: this token may read the settings but not change them.'));
    }
    append(form, ...actions);
    replace(this.main,
      el('h1', {}, title),
      el('p', { class: 'lead' }, intro),
      el('p', { class: 'meta', id: 'settings-meta' }, meta),
      this.errorSummary, this.summary, form, this.saveAlert, this.saveStatus);
    this.updateSummary();
  }

  renderAuthentication() {
    const set = el('fieldset', {}, el('legend', {}, 'Credentials'));
    this.authRow = this.row({ name: 'auth_method', label: 'Authentication', kind: 'select', options: [['password', 'Password'], ['oauth2', 'OAuth2']] }, set);
    // auth_method stands for auth.method; its inherit state is auth's.
    const ownAuth = Object.prototype.hasOwnProperty.call(this.doc, 'auth');
    const systemAuth = (this.system && this.system.auth) || { method: 'password' };
    if (this.authRow.inherit) {
      this.authRow.inherit.checked = !ownAuth;
      this.applyInherit(this.authRow, false);
    }
    this.authRow.ctl.set((this.auth || (this.isTenant && !ownAuth ? systemAuth : null) || { method: 'password' }).method);
    this.rows.delete('auth_method');
    this.rows.set('auth_method', this.authRow);
    CREDENTIAL_FIELDS.forEach((spec) => this.row(spec, set));

    this.passwordBox = el('div', { class: 'field', id: 'row-field-password' });
    append(set, this.passwordBox);
    this.passwordInherit = null;
    if (this.isTenant) {
      this.passwordInherit = el('input', { type: 'checkbox', id: 'inherit-password', class: 'inherit', checked: !Object.prototype.hasOwnProperty.call(this.doc, 'password'), disabled: !this.editable });
      this.passwordInherit.addEventListener('change', () => { this.renderPassword(); this.changed(); });
    }
    this.oauthBox = el('div', { class: 'oauth', id: 'oauth-fields' });
    append(set, this.oauthBox);
    this.authRow.ctl.input.addEventListener('change', () => this.renderAuthMode());
    this.authRow.inherit && this.authRow.inherit.addEventListener('change', () => this.renderAuthMode());
    this.renderPassword();
    this.renderAuthMode();
    return set;
  }

  effectiveAuth() {
    if (this.authRow.inherit && this.authRow.inherit.checked) return (this.system && this.system.auth) || { method: 'password' };
    return { ...(this.auth || {}), method: this.authRow.ctl.get() };
  }

  renderAuthMode() {
    const auth = this.effectiveAuth();
    const oauth = auth.method === 'oauth2';
    this.passwordBox.hidden = oauth;
    clear(this.oauthBox);
    this.oauthBox.hidden = !oauth;
    if (!oauth) { this.updateSummary(); return; }
    const locked = !this.editable || (this.authRow.inherit && this.authRow.inherit.checked);
    this.auth = { ...auth };
    const flow = el('select', { id: 'field-auth-flow', disabled: locked }, FLOWS.map(([value, label]) => el('option', { value, selected: auth.flow === value }, label)));
    if (!auth.flow) this.auth.flow = flow.value;
    flow.addEventListener('change', () => { this.auth.flow = flow.value; this.renderAuthMode(); this.changed(); });
    append(this.oauthBox, field({ id: 'field-auth-flow', label: 'Flow', control: flow }));
    for (const spec of OAUTH_FIELDS.filter((s) => s.flows.includes(this.auth.flow))) {
      const input = el('input', { id: `field-auth-${spec.name}`, type: 'text', spellcheck: 'false', value: this.auth[spec.name] || '', disabled: locked });
      input.addEventListener('input', () => { this.auth[spec.name] = input.value.trim() || undefined; this.changed(); });
      append(this.oauthBox, field({ id: `field-auth-${spec.name}`, label: spec.label, control: input }));
    }
    for (const spec of OAUTH_SECRETS.filter((s) => s.flows.includes(this.auth.flow))) {
      const current = this.auth[spec.name];
      const button = el('button', { type: 'button', class: 'secondary', id: `set-${spec.name}`, disabled: locked }, `${current ? 'Change' : 'Set'} ${spec.what}`);
      button.addEventListener('click', () => openSecretDialog({
        what: spec.what, current, multiline: spec.multiline,
        onChoose: (ref) => {
          this.auth[spec.name] = ref;
          if (spec.excludes) delete this.auth[spec.excludes];
          this.renderAuthMode();
          this.changed();
        },
      }));
      append(this.oauthBox, el('div', { class: 'field', id: `row-field-auth-${spec.name}` },
        el('span', { class: 'label' }, spec.label),
        el('p', { class: 'field-error', id: `field-auth-${spec.name}-error`, hidden: true }),
        el('p', { class: 'reference' }, describeReference(current)), button));
    }
    this.updateSummary();
  }

  passwordInherited() {
    return Boolean(this.passwordInherit && this.passwordInherit.checked);
  }

  effectivePassword() {
    if (this.passwordInherited()) return this.system ? this.system.password ?? null : null;
    return this.password;
  }

  renderPassword() {
    const inherited = this.passwordInherited();
    const shown = this.effectivePassword();
    const children = [el('span', { class: 'label', id: 'password-label' }, 'Password'),
      el('p', { class: 'field-error', id: 'field-password-error', hidden: true }),
      el('p', { class: 'reference', id: 'password-summary' }, describeReference(shown))];
    if (this.passwordInherit) {
      children.push(el('div', { class: 'inherit-row' },
        el('span', { class: 'inherited-tag', id: 'inherited-password', hidden: !inherited }, 'inherited'),
        el('label', { class: 'inline' }, this.passwordInherit, ' Use system value')));
    }
    if (this.editable && !inherited) {
      const change = el('button', { type: 'button', class: 'secondary', id: 'password-button' }, this.password ? 'Change password' : 'Add password');
      change.addEventListener('click', () => openSecretDialog({
        what: 'password', current: this.password,
        onChoose: (ref) => { this.password = ref; this.renderPassword(); this.changed(); },
      }));
      const buttons = el('div', { class: 'buttons' }, change);
      if (this.password) {
        const remove = el('button', { type: 'button', class: 'link-button', id: 'password-remove' }, 'Remove password');
        remove.addEventListener('click', () => { this.password = null; this.renderPassword(); this.changed(); });
        append(buttons, remove);
      }
      children.push(buttons);
    }
    replace(this.passwordBox, ...children);
  }

  renderNotifications() {
    const id = 'field-preferred_notifications';
    const set = el('fieldset', { class: 'checkboxes', id });
    append(set, el('legend', {}, 'Preferred notifications'),
      el('p', { class: 'hint' }, 'Cc and Bcc are added to these notification types only.'),
      el('p', { class: 'field-error', id: `${id}-error`, hidden: true }));
    const boxes = this.notificationTypes.map((name) => {
      const box = el('input', { type: 'checkbox', id: `notify-${name}`, value: name });
      append(set, el('div', { class: 'checkbox' }, box, el('label', { for: `notify-${name}` }, humanise(name))));
      box.addEventListener('change', () => this.changed());
      return box;
    });
    const ctl = {
      input: set,
      get: () => boxes.filter((b) => b.checked).map((b) => b.value),
      set: (values) => { boxes.forEach((b) => { b.checked = (values || []).includes(b.value); }); },
    };
    const entry = { spec: { name: 'preferred_notifications', kind: 'notifications' }, ctl, inherit: null };
    if (this.isTenant) {
      const box = el('input', { type: 'checkbox', id: 'inherit-preferred_notifications', class: 'inherit' });
      const tag = el('span', { class: 'inherited-tag', id: 'inherited-preferred_notifications' }, 'inherited');
      append(set, el('div', { class: 'inherit-row' }, tag, el('label', { class: 'inline' }, box, ' Use system value')));
      entry.inherit = box;
      entry.tag = tag;
      box.addEventListener('change', () => { this.applyInherit(entry, true); boxes.forEach((b) => { b.disabled = box.checked || !this.editable; }); this.changed(); });
    }
    const own = Object.prototype.hasOwnProperty.call(this.doc, 'preferred_notifications');
    if (entry.inherit) entry.inherit.checked = !own;
    ctl.set(own ? this.doc.preferred_notifications : this.inheritedValue('preferred_notifications'));
    if (entry.inherit) {
      entry.tag.hidden = !entry.inherit.checked;
      entry.inherit.disabled = !this.editable;
    }
    boxes.forEach((b) => { b.disabled = (entry.inherit && entry.inherit.checked) || !this.editable; });
    entry.ctl.input = { disabled: false };  // the fieldset itself is never disabled
    this.rows.set('preferred_notifications', entry);
    return set;
  }

  renderChecks() {
    this.validateButton = el('button', { type: 'button', class: 'check', id: 'validate', dataset: { state: 'idle' } }, 'Validate configuration');
    this.testButton = el('button', { type: 'button', class: 'check', id: 'test-connection', dataset: { state: 'idle' } }, 'Test connection');
    this.sendTo = el('input', { id: 'send-test-to', type: 'text', spellcheck: 'false', autocomplete: 'email' });
    this.checkProgress = el('p', { class: 'progress', id: 'check-progress', role: 'status' });
    this.checkArea = el('div', { class: 'check-result', id: 'check-result' });
    this.validateButton.addEventListener('click', () => this.runCheck(this.validateButton, 'validate', 'Validation'));
    this.testButton.addEventListener('click', () => this.runCheck(this.testButton, 'test-connection', 'Test connection'));
    return el('section', { class: 'checks', 'aria-labelledby': 'checks-title' },
      el('h2', { id: 'checks-title' }, 'Check before saving'),
      el('p', { class: 'hint' }, 'Both checks use what is in the form now, saved or not. Validation connects, starts TLS and logs in without sending mail; the test also sends a mail.'),
      el('div', { class: 'buttons' }, this.validateButton),
      field({ id: 'send-test-to', label: 'Send test mail to', hint: 'Defaults to the from email.', control: this.sendTo }),
      el('div', { class: 'buttons' }, this.testButton),
      this.checkProgress, this.checkArea);
  }

  /** The level's document as the form holds it (PUT body shape). */
  collect() {
    const doc = {};
    // Fields this form does not show (envelope_from, fields of later versions) are kept as read.
    for (const [name, value] of Object.entries(this.doc)) doc[name] = value;
    for (const [name, entry] of this.rows) {
      if (name === 'auth_method') continue;
      if (entry.inherit && entry.inherit.checked) { delete doc[name]; continue; }
      const value = entry.ctl.get();
      if (!this.isTenant && (value === null || value === undefined)) { delete doc[name]; continue; }
      doc[name] = value;
    }
    if (this.passwordInherited()) delete doc.password;
    else if (this.password === null && !this.isTenant) delete doc.password;
    else doc.password = this.password;
    const authInherited = this.authRow.inherit && this.authRow.inherit.checked;
    const method = this.authRow.ctl.get();
    if (authInherited) {
      delete doc.auth;
    } else if (method === 'oauth2') {
      // Until the OAuth2 fields are drawn (the same change event), the first flow is the one shown.
      const auth = { flow: FLOWS[0][0], ...(this.auth || {}), method: 'oauth2' };
      const keep = ['method', 'flow', ...(FLOW_FIELDS[auth.flow] || [])];
      doc.auth = Object.fromEntries(Object.entries(auth)
        .filter(([k, v]) => keep.includes(k) && v !== undefined && v !== ''));
      // OAuth2 takes no password (the service refuses both together).
      if (this.isTenant) doc.password = null;
      else delete doc.password;
    } else if (this.doc.auth !== undefined || (this.isTenant && this.system && this.system.auth)) {
      doc.auth = { method: 'password' };
    } else {
      // Services without the auth object keep working: password is the default method.
      delete doc.auth;
    }
    return doc;
  }

  /** What the merged settings would be, for the summary line and the anonymous warning. */
  effective() {
    const doc = this.collect();
    const merged = this.isTenant ? { ...DEFAULTS, ...(this.system || {}), ...doc } : { ...DEFAULTS, ...doc };
    return merged;
  }

  updateSummary() {
    const merged = this.effective();
    const security = (SECURITY.find(([v]) => v === merged.security) || [null, merged.security])[1];
    const oauth = merged.auth && merged.auth.method === 'oauth2';
    const anonymous = !oauth && !merged.username && !merged.password;
    const parts = [
      el('span', { class: 'label' }, 'Connection: '),
      el('span', { id: 'summary-text' }, merged.host
        ? `${merged.host}:${merged.port ?? '?'} · ${security} · ${oauth ? `OAuth2 as ${merged.username || '?'}` : merged.username ? `user ${merged.username}` : 'no login'}`
        : 'no server set'),
    ];
    if (anonymous) {
      parts.push(el('span', { class: 'warning', id: 'anonymous-warning' },
        el('span', { class: 'icon', 'aria-hidden': 'true' }, '\u26A0'), ' Anonymous SMTP'),
        el('span', { class: 'hint inline' }, ' (no username or password: the server must accept mail without login)'));
    } else if (merged.security === 'none') {
      parts.push(el('span', { class: 'warning', id: 'plaintext-warning' },
        el('span', { class: 'icon', 'aria-hidden': 'true' }, '\u26A0'), ' Credentials over plaintext'));
    }
    replace(this.summary, ...parts);
    if (this.sendTo) this.sendTo.placeholder = merged.from_email || '';
  }

  changed() {
    this.updateSummary();
    // A result no longer describes the form once it changes.
    for (const button of [this.validateButton, this.testButton]) {
      if (button && button.dataset.state !== 'busy') setState(button, 'idle');
    }
  }

  clearErrors() {
    this.errorSummary.hidden = true;
    clear(this.errorSummary);
    for (const node of this.main.querySelectorAll('.field-error')) { node.hidden = true; node.textContent = ''; }
    for (const node of this.main.querySelectorAll('.has-error')) node.classList.remove('has-error');
    for (const node of this.main.querySelectorAll('[aria-invalid]')) node.removeAttribute('aria-invalid');
  }

  /** 422 errors beside their fields, and a summary linking to each. */
  showErrors(errors, detail) {
    const items = [];
    const place = (name, message) => {
      const key = name === 'auth' ? 'auth_method' : name;
      const target = key === 'password' ? 'field-password' : key === 'auth_method' ? 'field-auth_method' : `field-${key}`;
      const slot = this.main.querySelector(`#${CSS.escape(target)}-error`);
      if (slot) {
        slot.hidden = false;
        slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
        const row = this.main.querySelector(`#row-${CSS.escape(target)}`) || slot.parentElement;
        row.classList.add('has-error');
        const input = this.main.querySelector(`#${CSS.escape(target)}`);
        if (input) input.setAttribute('aria-invalid', 'true');
      }
      const label = this.main.querySelector(`label[for="${CSS.escape(target)}"]`);
      const fieldName = label ? label.textContent : humanise(key === 'auth_method' ? 'authentication' : key);
      const link = el('a', { href: `#${target}` }, `${fieldName}: ${message}`);
      link.addEventListener('click', (event) => {
        event.preventDefault();
        const focusable = this.main.querySelector(`#${CSS.escape(target)}`) || this.main.querySelector(`#password-button`);
        if (focusable && focusable.focus) focusable.focus();
      });
      items.push(el('li', {}, link));
    };
    const walk = (name, value) => {
      if (Array.isArray(value)) value.forEach((message) => (typeof message === 'string' ? place(name, message) : walk(name, message)));
      else if (value && typeof value === 'object') {
        for (const [sub, inner] of Object.entries(value)) {
          if (Array.isArray(inner) && inner.every((m) => typeof m === 'string')) inner.forEach((m) => place(name, /^\d+$/.test(sub) ? `item ${Number(sub) + 1}: ${m}` : `${sub}: ${m}`));
          else walk(name, inner);
        }
      } else if (typeof value === 'string') place(name, value);
    };
    for (const [name, value] of Object.entries(errors || {})) {
      if (name === 'settings' && value && !Array.isArray(value)) {
        for (const [inner, messages] of Object.entries(value)) walk(inner, messages);
      } else walk(name, value);
    }
    replace(this.errorSummary,
      el('h2', {}, 'There is a problem'),
      el('p', {}, detail || 'Correct the fields below.'),
      el('ul', {}, items));
    this.errorSummary.hidden = false;
    this.errorSummary.focus();
  }

  async runCheck(button, kind, label) {
    this.clearErrors();
    const other = button === this.validateButton ? this.testButton : this.validateButton;
    setState(button, 'busy');
    other.disabled = true;
    const merged = this.effective();
    replace(this.checkProgress, `${label} running: this can take up to ${merged.timeout_seconds || 10} seconds…`);
    clear(this.checkArea);
    const body = { settings: this.collect() };
    const to = this.sendTo.value.trim();
    if (kind === 'test-connection' && to) body.to = to;
    const answer = await api.post(`${this.base}/${kind}`, body);
    other.disabled = other.dataset.state === 'busy';
    clear(this.checkProgress);
    if (answer.status === 200) {
      setState(button, answer.body.ok ? 'success' : 'failure');
      showResult(this.checkArea, label, answer.body);
    } else {
      setState(button, 'failure');
      showRefusal(this.checkArea, label, answer);
      if (answer.status === 422) this.showErrors(answer.body.errors, answer.detail);
    }
  }

  askConfirm() {
    this.clearErrors();
    clear(this.saveStatus);
    clear(this.saveAlert);
    const scope = this.isTenant ? `for tenant "${this.tenant}"` : 'for the system (every tenant without an override)';
    const confirm = el('button', { type: 'button', class: 'primary', id: 'confirm' }, 'Confirm');
    const cancel = el('button', { type: 'button', class: 'secondary', id: 'cancel-confirm' }, 'Cancel');
    confirm.addEventListener('click', () => this.save(confirm));
    cancel.addEventListener('click', () => { clear(this.confirmArea); this.submitButton.focus(); });
    replace(this.confirmArea, el('div', { class: 'confirm-box', role: 'group', 'aria-labelledby': 'confirm-text' },
      el('p', { id: 'confirm-text' }, `Save these settings ${scope}? Senders use them from their next request.`),
      el('div', { class: 'buttons' }, confirm, cancel)));
    confirm.focus();
  }

  async save(confirmButton) {
    confirmButton.disabled = true;
    const headers = this.etag ? { 'If-Match': this.etag } : {};
    const answer = await api.put(this.base, this.collect(), { headers });
    clear(this.confirmArea);
    if (answer.status === 200) {
      this.stored = answer.body;
      this.etag = answer.etag;
      this.doc = Object.fromEntries(Object.entries(answer.body).filter(([k]) => !READ_ONLY.includes(k)));
      this.password = this.doc.password === undefined ? null : this.doc.password;
      this.auth = this.doc.auth ? { ...this.doc.auth } : null;
      this.rows = new Map();
      this.render();
      replace(this.saveStatus, el('p', { class: 'saved' }, el('span', { class: 'icon', 'aria-hidden': 'true' }, '\u2714 '), 'Settings saved', ` (version ${answer.body.version}).`));
      this.saveStatus.scrollIntoView({ block: 'nearest' });
      return;
    }
    if (answer.status === 412) {
      const reload = el('button', { type: 'button', class: 'primary', id: 'reload' }, 'Reload');
      reload.addEventListener('click', () => renderSettings(this.main, { can: () => this.editable }, this.tenant));
      replace(this.saveAlert, el('div', { class: 'result failure' },
        el('p', { class: 'result-title' }, 'Someone else saved these settings after you opened this page, so yours were not saved.'),
        el('p', {}, 'Reload to see the settings as they are now, then make your changes again.'),
        reload));
      reload.focus();
      return;
    }
    if (answer.status === 422) {
      this.showErrors(answer.body.errors, answer.detail);
      return;
    }
    replace(this.saveAlert, el('div', { class: 'result failure' },
      el('p', { class: 'result-title' }, 'The settings were not saved.'),
      el('p', {}, `${answer.detail} (${answer.code})`)));
  }
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// The settings page, for the system level and for one tenant: the form, checks, submit with If-Match.

import * as api from './api.js';
import { el, append, replace, clear, field, when } from './dom.js';
import { setState, showResult, showRefusal } from './checks.js';
import { SECURITY, FLOWS, DEFAULTS, GROUPS, FLOW_FIELDS, humanise, control } from './settings-fields.js';
import { credentialMethods } from './settings-credentials.js';
import { clearErrors, showErrors } from './settings-errors.js';

const READ_ONLY = ['version', 'updated_at', 'updated_by', 'warnings', 'inherited'];

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

  async runCheck(button, kind, label) {
    clearErrors(this.main, this.errorSummary);
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
      if (answer.status === 422) showErrors(this.main, this.errorSummary, answer.body.errors, answer.detail);
    }
  }

  askConfirm() {
    clearErrors(this.main, this.errorSummary);
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
      showErrors(this.main, this.errorSummary, answer.body.errors, answer.detail);
      return;
    }
    replace(this.saveAlert, el('div', { class: 'result failure' },
      el('p', { class: 'result-title' }, 'The settings were not saved.'),
      el('p', {}, `${answer.detail} (${answer.code})`)));
  }
}

Object.assign(SettingsPage.prototype, credentialMethods);

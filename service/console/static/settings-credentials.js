// The settings form's Credentials section: Password or OAuth2 (each flow's fields), and the password reference.

import { el, append, replace, clear, field } from './dom.js';
import { openSecretDialog, describeReference } from './secret-dialog.js';
import { FLOWS, CREDENTIAL_FIELDS, OAUTH_FIELDS, OAUTH_SECRETS } from './settings-fields.js';

/** Methods of the settings page (mixed into it): they read and change its auth, password and rows. */
export const credentialMethods = {
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
  },

  effectiveAuth() {
    if (this.authRow.inherit && this.authRow.inherit.checked) return (this.system && this.system.auth) || { method: 'password' };
    return { ...(this.auth || {}), method: this.authRow.ctl.get() };
  },

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
  },

  passwordInherited() {
    return Boolean(this.passwordInherit && this.passwordInherit.checked);
  },

  effectivePassword() {
    if (this.passwordInherited()) return this.system ? this.system.password ?? null : null;
    return this.password;
  },

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
  },
};

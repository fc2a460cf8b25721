// The console's entry: sign-in, navigation by the token's roles (GET /v1/whoami), and the page router.

import * as api from './api.js';
import { el, replace } from './dom.js';
import { renderSettings } from './settings.js';
import { renderTenants } from './tenants.js';
import { renderSecretManagers, renderSecrets } from './security.js';
import { renderAudit } from './audit.js';
import { renderRecentMail } from './recent-mail.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const session = document.getElementById('session');

/** Pages, who may see them (any one of the roles), and how they render. */
const PAGES = [
  { path: '/system', title: 'System settings', roles: ['admin', 'reader'], render: (ctx) => renderSettings(main, ctx, null) },
  { path: '/tenants', title: 'Tenants', roles: ['admin', 'reader'], render: (ctx) => renderTenants(main, ctx) },
  { path: '/secret-managers', title: 'Secret managers', roles: ['security'], render: (ctx) => renderSecretManagers(main, ctx) },
  { path: '/secrets', title: 'Secrets', roles: ['security'], render: (ctx) => renderSecrets(main, ctx) },
  { path: '/audit', title: 'Audit trail', roles: ['security', 'admin'], render: (ctx) => renderAudit(main, ctx) },
  { path: '/recent-mail', title: 'Recent mail', roles: ['admin', 'security'], render: (ctx) => renderRecentMail(main, ctx) },
];

let context = null;

function allowed(page) {
  return context && page.roles.some((role) => context.roles.includes(role));
}

function signInPage(message) {
  nav.hidden = true;
  session.hidden = true;
  const input = el('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'token-hint' });
  const error = el('p', { class: 'field-error', id: 'token-error', role: 'alert', hidden: !message }, message || '');
  const form = el('form', { class: 'signin', novalidate: true },
    el('h1', {}, 'Sign in'),
    el('p', { class: 'lead' }, 'Manage the SMTP settings of the system and of each tenant, and the secret managers that hold their passwords.'),
    el('div', { class: 'field' },
      el('label', { for: 'token' }, 'Access token'),
      el('p', { class: 'hint', id: 'token-hint' }, 'An API token, created with "smtpconf token create". It is kept in this browser tab only, until you sign out or close the tab.'),
      error,
      input),
    el('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) {
      error.textContent = 'Enter an access token.';
      error.hidden = false;
      input.focus();
      return;
    }
    api.setToken(value);
    input.value = '';
    await start();
  });
  replace(main, form);
  document.title = 'Sign in - SMTP settings console';
  input.focus();
}

function renderChrome() {
  const links = PAGES.filter(allowed).map((page) => el('a', { href: `#${page.path}`, dataset: { path: page.path } }, page.title));
  replace(nav, ...links);
  nav.hidden = links.length === 0;
  const signOut = el('button', { type: 'button', class: 'link-button', id: 'sign-out' }, 'Sign out');
  signOut.addEventListener('click', () => {
    api.forgetToken();
    context = null;
    if (location.hash) history.replaceState(null, '', location.pathname);
    signInPage();
  });
  replace(session, el('span', { class: 'who' }, `Signed in as ${context.name} (${context.roles.join(', ')})`), signOut);
  session.hidden = false;
}

function landing() {
  const first = PAGES.find(allowed);
  return first ? first.path : null;
}

async function route() {
  if (!context) return;
  const hash = location.hash.startsWith('#/') ? location.hash.slice(1) : '';
  let path = hash || landing();
  if (!path) {
    replace(main, el('h1', {}, 'Nothing to manage here'),
      el('p', {}, `This token has the role ${context.roles.join(', ')}: it is meant for services that read the settings, and the console has no page for it.`));
    return;
  }
  const tenantMatch = path.match(/^\/tenants\/(.+)$/);
  let page = PAGES.find((candidate) => candidate.path === path);
  if (tenantMatch && allowed(PAGES[1])) {
    page = { path: '/tenants', title: 'Tenants', render: (ctx) => renderSettings(main, ctx, decodeURIComponent(tenantMatch[1])) };
  } else if (!page || !allowed(page)) {
    path = landing();
    page = PAGES.find((candidate) => candidate.path === path);
    history.replaceState(null, '', `#${path}`);
  }
  for (const link of nav.querySelectorAll('a')) {
    if (link.dataset.path === page.path) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${page.title} - SMTP settings console`;
  replace(main, el('p', { class: 'loading', role: 'status' }, 'Loading…'));
  await page.render(context);
  main.focus({ preventScroll: true });
}

async function start() {
  if (!api.token()) {
    signInPage();
    return;
  }
  const answer = await api.get('/v1/whoami');
  if (!answer.ok) {
    api.forgetToken();
    signInPage(answer.status === 401 ? 'That access token is not valid. Check it and try again.' : answer.detail);
    return;
  }
  context = { name: answer.body.name, roles: answer.body.roles, tenants: answer.body.tenants ?? null, can: (role) => answer.body.roles.includes(role) };
  renderChrome();
  await route();
}

api.onUnauthorized(() => {
  if (!context) return;
  api.forgetToken();
  context = null;
  signInPage('The session ended: the token is no longer valid. Sign in again.');
});
window.addEventListener('hashchange', () => { route(); });
start();

// The settings form's errors: each beside its field, and a summary at the top that links to each field.

import { el, clear, replace } from './dom.js';
import { humanise } from './settings-fields.js';

/** Takes every field error and the summary off the page. */
export function clearErrors(main, summary) {
  summary.hidden = true;
  clear(summary);
  for (const node of main.querySelectorAll('.field-error')) { node.hidden = true; node.textContent = ''; }
  for (const node of main.querySelectorAll('.has-error')) node.classList.remove('has-error');
  for (const node of main.querySelectorAll('[aria-invalid]')) node.removeAttribute('aria-invalid');
}

/** 422 errors beside their fields, and a summary linking to each. */
export function showErrors(main, summary, errors, detail) {
  const items = [];
  const place = (name, message) => {
    const key = name === 'auth' ? 'auth_method' : name;
    const target = key === 'password' ? 'field-password' : key === 'auth_method' ? 'field-auth_method' : `field-${key}`;
    const slot = main.querySelector(`#${CSS.escape(target)}-error`);
    if (slot) {
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
      const row = main.querySelector(`#row-${CSS.escape(target)}`) || slot.parentElement;
      row.classList.add('has-error');
      const input = main.querySelector(`#${CSS.escape(target)}`);
      if (input) input.setAttribute('aria-invalid', 'true');
    }
    const label = main.querySelector(`label[for="${CSS.escape(target)}"]`);
    const fieldName = label ? label.textContent : humanise(key === 'auth_method' ? 'authentication' : key);
    const link = el('a', { href: `#${target}` }, `${fieldName}: ${message}`);
    link.addEventListener('click', (event) => {
      event.preventDefault();
      const focusable = main.querySelector(`#${CSS.escape(target)}`) || main.querySelector(`#password-button`);
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
  replace(summary,
    el('h2', {}, 'There is a problem'),
    el('p', {}, detail || 'Correct the fields below.'),
    el('ul', {}, items));
  summary.hidden = false;
  summary.focus();
}

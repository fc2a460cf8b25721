// Validate configuration and Test connection: the busy state, green or red, and the diagnosis.

import { el, replace } from './dom.js';

export function setState(button, state) {
  button.dataset.state = state;
  button.disabled = state === 'busy';
  button.setAttribute('aria-busy', state === 'busy' ? 'true' : 'false');
  button.classList.toggle('success', state === 'success');
  button.classList.toggle('failure', state === 'failure');
}

function entry(term, value) {
  if (value === undefined || value === null || value === '') return [];
  return [el('dt', {}, term), el('dd', {}, String(value))];
}

/** The outcome of a check in `area`: a status line on success, an alert with the diagnosis otherwise. */
export function showResult(area, label, result) {
  const server = result.server || {};
  const transcript = Array.isArray(result.transcript) && result.transcript.length
    ? el('details', { class: 'transcript' }, el('summary', {}, 'Transcript'), el('pre', {}, result.transcript.join('\n')))
    : null;
  if (result.ok) {
    const facts = [
      server.tls_version ? `over ${server.tls_version}` : 'without TLS',
      result.message_id ? 'test mail accepted by the server' : null,
      `${result.elapsed_ms} ms`,
    ].filter(Boolean).join(', ');
    replace(area,
      el('div', { class: 'result success', role: 'status' },
        el('p', { class: 'result-title' }, el('span', { class: 'icon', 'aria-hidden': 'true' }, '\u2714 '), `${label}: passed (${facts}).`),
        el('dl', {}, entry('Server', server.banner), entry('Certificate', server.certificate && server.certificate.subject),
          entry('Message-ID', result.message_id)),
        transcript));
    return;
  }
  const error = result.error || {};
  const reply = error.smtp_code ? `${error.smtp_code} ${error.smtp_message || ''}`.trim() : error.smtp_message;
  replace(area,
    el('div', { class: 'result failure', role: 'alert' },
      el('p', { class: 'result-title' }, el('span', { class: 'icon', 'aria-hidden': 'true' }, '\u2716 '), `${label}: failed.`),
      el('dl', {},
        entry('Error code', error.code),
        entry('Stage', result.stage),
        entry('Message', error.message),
        entry('SMTP reply', reply),
        entry('OAuth2 error', error.oauth_error)),
      transcript));
}

/** A check the service refused to run (invalid settings, rate limit, network). */
export function showRefusal(area, label, answer) {
  replace(area,
    el('div', { class: 'result failure', role: 'alert' },
      el('p', { class: 'result-title' }, el('span', { class: 'icon', 'aria-hidden': 'true' }, '\u2716 '), `${label}: not run.`),
      el('dl', {}, entry('Error code', answer.code), entry('Message', answer.detail))));
}

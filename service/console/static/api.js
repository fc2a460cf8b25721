// The one client of the /v1 API every page uses; the token lives only in this tab's sessionStorage.

const TOKEN_KEY = 'smtpconf.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** What every call answers: never throws for an HTTP status, only for a network failure turned into status 0. */
export class Answer {
  constructor(status, body, headers) {
    this.status = status;
    this.body = body;
    this.headers = headers;
  }

  get ok() {
    return this.status >= 200 && this.status < 300;
  }

  get code() {
    return (this.body && this.body.code) || (this.status === 0 ? 'network_error' : `http_${this.status}`);
  }

  get detail() {
    if (this.status === 0) return 'The service could not be reached. Check the connection and try again.';
    return (this.body && (this.body.detail || this.body.title)) || `The service answered HTTP ${this.status}.`;
  }

  get etag() {
    return this.headers ? this.headers.get('ETag') : null;
  }
}

const listeners = [];
/** Called with every 401, so the app can send the user back to sign-in. */
export function onUnauthorized(listener) {
  listeners.push(listener);
}

export async function call(method, path, { body, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, signal, cache: 'no-store' };
  const current = token();
  if (current) init.headers.Authorization = `Bearer ${current}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    return new Answer(0, null, null);
  }
  let parsed = null;
  const type = response.headers.get('Content-Type') || '';
  if (type.includes('json')) {
    try {
      parsed = await response.json();
    } catch (error) {
      parsed = null;
    }
  }
  const answer = new Answer(response.status, parsed, response.headers);
  if (response.status === 401) listeners.forEach((listener) => listener(answer));
  return answer;
}

export const get = (path, options) => call('GET', path, options);
export const put = (path, body, options = {}) => call('PUT', path, { ...options, body });
export const post = (path, body, options = {}) => call('POST', path, { ...options, body });
export const del = (path, options) => call('DELETE', path, options);

/** A path segment: tenant ids and connection names are encoded; secret names keep their slashes. */
export function segment(value) {
  return encodeURIComponent(value);
}

export function secretPath(name) {
  return name.split('/').map(encodeURIComponent).join('/');
}

let typesAnswer = null;
/** The installed provider types with their schemas, read once per page load (they change only with a deployment). */
export async function providerTypes() {
  if (!typesAnswer || !typesAnswer.ok) typesAnswer = await get('/v1/secret-provider-types');
  return typesAnswer.ok ? typesAnswer.body.items : [];
}

// Form fields built from a provider type's connection JSON schema (GET /v1/secret-provider-types).

import { el, append, replace, field } from './dom.js';

const WORDS = { url: 'URL', id: 'ID', ttl: 'TTL', kv: 'KV', ca: 'CA', jwt: 'JWT', pem: '(PEM)' };
const CHOICES = {
  token: 'Token', approle: 'AppRole', kubernetes: 'Kubernetes', jwt: 'JWT',
  default: 'Default (the environment\'s own identity)', client_secret: 'Client secret',
  managed_identity: 'Managed identity', workload_identity: 'Workload identity',
};
const REFERENCE_KINDS = [['env', 'Environment variable'], ['file', 'File'], ['internal', 'Internal secret']];
/** Fields every connection has: after the ones that say where the manager is and how to log in. */
const LAST = ['allowed_secrets', 'cache_ttl_seconds', 'max_stale_seconds', 'timeout_seconds', 'max_retries'];
const HINTS = {
  allowed_secrets: 'Glob patterns of the secrets settings may use, comma separated (mail/*). Empty: none.',
  cache_ttl_seconds: 'How long a value read from the manager is used before it is read again.',
  max_stale_seconds: 'How long the last good value is still served while the manager cannot be reached.',
};

/** "cache_ttl_seconds" -> "cache TTL (seconds)"; the caller capitalises. */
function words(key) {
  const parts = key.split('_');
  const unit = parts.length > 1 && parts[parts.length - 1] === 'seconds' ? (parts.pop(), ' (seconds)') : '';
  return parts.map((part) => WORDS[part] || part).join(' ') + unit;
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function types(schema) {
  return [].concat(schema.type || []);
}

function isReference(schema) {
  return Boolean(schema.properties && schema.properties.env && schema.properties.file && schema.maxProperties === 1);
}

function discriminatorOf(variant) {
  return Object.keys(variant.properties || {}).find((key) => variant.properties[key].const !== undefined);
}

/**
 * Builds the fields of an object schema into `container`.
 * Returns { read(): the document's members, slots(): Map(dotted path -> control id) } for placing errors.
 */
export function buildObject(container, schema, value, { path = [], title = '', required = schema.required || [], skip = [] } = {}) {
  const readers = [];
  const children = [];
  const rank = ([key]) => LAST.indexOf(key);
  const ordered = Object.entries(schema.properties || {}).sort((a, b) => rank(a) - rank(b));
  for (const [key, property] of ordered) {
    if (skip.includes(key)) continue;
    const here = [...path, key];
    const built = buildField(container, key, property, value ? value[key] : undefined, {
      path: here, title: title ? `${title} ${words(key)}` : capitalise(words(key)), optional: !required.includes(key),
    });
    children.push(built);
    readers.push([key, built.read]);
  }
  const read = () => {
    const document = {};
    for (const [key, reader] of readers) {
      const member = reader();
      if (member !== undefined) document[key] = member;
    }
    return document;
  };
  const slots = () => new Map(children.flatMap((child) => [...child.slots()]));
  return { read, slots };
}

function idOf(path) {
  return `conn-${path.join('-')}`;
}

function buildField(container, key, schema, value, { path, title, optional }) {
  const id = idOf(path);
  const own = [path.join('.'), id];
  const slots = () => new Map([own]);
  const label = optional ? `${title} (optional)` : title;
  const hintParts = [HINTS[key], schema.description && !isReference(schema) ? schema.description : null,
    schema.default !== undefined && typeof schema.default !== 'boolean' ? `Default: ${schema.default}.` : null].filter(Boolean);
  const hint = hintParts.join(' ') || undefined;

  if (schema.oneOf) return buildChoice(container, schema, value, { path, title, id, own });
  if (isReference(schema)) return buildReference(container, schema, value, { path, title, label, id, slots });
  const kinds = types(schema);
  if (schema.enum) {
    const select = el('select', { id },
      optional ? el('option', { value: '' }, schema.default !== undefined ? `Default (${schema.default})` : 'None') : null,
      schema.enum.map((choice) => el('option', { value: String(choice), selected: value !== undefined && value !== null && String(value) === String(choice) }, String(choice))));
    append(container, field({ id, label, hint, control: select }));
    return { slots, read: () => (select.value === '' ? undefined : schema.enum.find((choice) => String(choice) === select.value)) };
  }
  if (kinds.includes('boolean')) {
    const box = el('input', { id, type: 'checkbox', checked: value === undefined ? Boolean(schema.default) : Boolean(value) });
    const row = el('div', { class: 'field checkbox-field', id: `row-${id}` }, box, el('label', { for: id }, title),
      el('p', { class: 'field-error', id: `${id}-error`, hidden: true }));
    append(container, row);
    return { slots, read: () => box.checked };
  }
  if (kinds.includes('array')) {
    const input = el('input', { id, type: 'text', spellcheck: 'false', autocomplete: 'off', value: Array.isArray(value) ? value.join(', ') : '' });
    append(container, field({ id, label, hint: hint || 'Comma separated.', control: input }));
    return { slots, read: () => input.value.split(',').map((item) => item.trim()).filter(Boolean) };
  }
  if (kinds.includes('object') && schema.properties) {
    const set = el('fieldset', { class: 'nested', id }, el('legend', {}, label));
    append(container, set);
    const inner = buildObject(set, schema, value, { path, title });
    return { slots: () => new Map([own, ...inner.slots()]), read: () => { const document = inner.read(); return Object.keys(document).length ? document : undefined; } };
  }
  const numeric = kinds.includes('integer') || kinds.includes('number');
  const text = value === undefined || value === null ? '' : String(value);
  const control = /_pem$/.test(key)
    ? el('textarea', { id, rows: 4, spellcheck: 'false', value: text })
    : el('input', { id, type: 'text', spellcheck: 'false', autocomplete: 'off', inputmode: numeric ? 'decimal' : null, value: text });
  append(container, field({ id, label, hint, control }));
  return {
    slots,
    read: () => {
      const entered = control.value.trim();
      if (!entered) return undefined;
      // What does not parse goes as typed: the service says why, beside the field.
      return numeric && /^-?\d+(\.\d+)?$/.test(entered) ? Number(entered) : entered;
    },
  };
}

/** A credential the service needs: where it is (env, file, internal), never its value. */
function buildReference(container, schema, value, { title, label, id, slots }) {
  const current = value && typeof value === 'object' ? Object.entries(value)[0] : null;
  const nullable = types(schema).includes('null');
  const kind = el('select', { id: `${id}-from` },
    nullable ? el('option', { value: '' }, 'None') : null,
    REFERENCE_KINDS.map(([choice, text]) => el('option', { value: choice, selected: Boolean(current) && current[0] === choice }, text)));
  if (!current && nullable) kind.value = '';
  const input = el('input', { id, type: 'text', spellcheck: 'false', autocomplete: 'off', value: current ? String(current[1]) : '' });
  const set = el('fieldset', { class: 'nested credential-ref' }, el('legend', {}, label),
    field({ id: `${id}-from`, label: `${title} from`, control: kind }),
    field({
      id, label: `${title} reference`, control: input,
      hint: 'The environment variable\'s name, the file\'s path, or the internal secret\'s name: never the value itself.',
    }));
  const sync = () => { input.closest('.field').hidden = kind.value === ''; };
  kind.addEventListener('change', sync);
  sync();
  append(container, set);
  return { slots, read: () => (kind.value === '' || !input.value.trim() ? undefined : { [kind.value]: input.value.trim() }) };
}

/** A document chosen by one of its fields (Vault's auth method, Azure's credential kind). */
function buildChoice(container, schema, value, { path, title, id, own }) {
  const variants = schema.oneOf.filter(discriminatorOf);
  const discriminator = discriminatorOf(variants[0]);
  const select = el('select', { id },
    variants.map((variant) => {
      const choice = variant.properties[discriminator].const;
      return el('option', { value: choice, selected: Boolean(value) && value[discriminator] === choice }, CHOICES[choice] || capitalise(words(choice)));
    }));
  const body = el('div', { class: 'choice-body' });
  append(container, field({ id, label: `${title} ${discriminator}`, control: select }), body);
  let inner = null;
  const show = () => {
    const variant = variants.find((candidate) => candidate.properties[discriminator].const === select.value);
    replace(body);
    const same = value && value[discriminator] === select.value ? value : undefined;
    inner = buildObject(body, variant, same, { path, title, skip: [discriminator], required: variant.required || [] });
  };
  select.addEventListener('change', show);
  show();
  return { slots: () => new Map([own, [`${path.join('.')}.${discriminator}`, id], ...inner.slots()]), read: () => ({ [discriminator]: select.value, ...inner.read() }) };
}

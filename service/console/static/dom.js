// Building elements without HTML parsing: every string from the API becomes a text node.

/**
 * el('p', {class: 'hint', id: 'x'}, 'text', child) -> <p class="hint" id="x">text<child/></p>
 * Attributes go through setAttribute; `on` holds event listeners; strings become text nodes.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'on') {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === 'dataset') {
      Object.assign(node.dataset, value);
    } else if (name === 'value' || name === 'checked' || name === 'disabled' || name === 'selected') {
      node[name] = value;
    } else {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function replace(node, ...children) {
  clear(node);
  return append(node, ...children);
}

let counter = 0;
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** A date-time from the API as the reader's local time, or the text itself when it does not parse. */
export function when(text) {
  if (!text) return '';
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? String(text) : date.toLocaleString();
}

/** A labelled field: <div class="field"><label/><hint/><error/><control/></div>. */
export function field({ id, label, hint, control, extra }) {
  const wrapper = el('div', { class: 'field', id: `row-${id}` });
  append(wrapper, el('label', { for: id }, label));
  if (hint) {
    const hintId = `${id}-hint`;
    append(wrapper, el('p', { class: 'hint', id: hintId }, hint));
    control.setAttribute('aria-describedby', hintId);
  }
  append(wrapper, el('p', { class: 'field-error', id: `${id}-error`, hidden: true }));
  append(wrapper, control);
  if (extra) append(wrapper, extra);
  return wrapper;
}

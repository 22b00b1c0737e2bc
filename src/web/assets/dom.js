/**
 * `h('td', { class: 'num' }, 'text', child)`: builds an element. Text always goes in as text
 * nodes, never as HTML, so names that come from the API cannot inject markup.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
    else if (value === true) element.setAttribute(key, '');
    else element.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** A horizontal bar for `fraction` (0..1) of something; `warn` above 0.8, `full` above 0.95. */
export function meter(fraction, label) {
  const clamped = Math.max(0, Math.min(1, fraction));
  const bar = h('span', { class: 'meter-fill' });
  bar.style.width = `${(clamped * 100).toFixed(1)}%`;
  const level = clamped > 0.95 ? 'full' : clamped > 0.8 ? 'warn' : 'ok';
  return h(
    'span',
    { class: `meter ${level}`, title: label },
    bar,
    h('span', { class: 'meter-label' }, label),
  );
}

/** Replaces the rows of `tbody`; an empty list shows `emptyText` across `columns` cells. */
export function fillRows(tbody, rows, columns, emptyText) {
  if (rows.length === 0) {
    tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: columns }, emptyText)));
  } else {
    tbody.replaceChildren(...rows);
  }
}

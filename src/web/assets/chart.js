/**
 * A small live line chart drawn as inline SVG: a rolling window of the last `pointsMax` samples
 * of one or more series, a y axis scaled to a round maximum, and a legend with each series'
 * latest value. The SVG is redrawn whole on each sample (a few polylines: cheaper than diffing).
 *
 * `svg.dataset.points` counts the samples taken so far and `svg.dataset.peak` is the largest
 * value in the window: the end-to-end test reads them.
 */
const SVG_NS = 'http://www.w3.org/2000/svg';
const WIDTH = 480;
const HEIGHT = 150;
const PAD = { left: 64, right: 10, top: 10, bottom: 20 };

function svgElement(name, attributes = {}) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/**
 * 1, 2 or 5 times a power of ten, at least `value`, so the axis labels read well; with
 * `base` 1024 (sizes), that in units of the largest power of 1024 below it: 20 MiB, not 19.1.
 */
function roundUp(value, base) {
  if (value <= 0) return 1;
  const unit = base === 1024 ? 1024 ** Math.floor(Math.log(value) / Math.log(1024)) : 1;
  const scaled = value / unit;
  const power = 10 ** Math.floor(Math.log10(scaled));
  for (const step of [1, 2, 5, 10]) if (step * power >= scaled) return step * power * unit;
  return 10 * power * unit;
}

export class LineChart {
  /**
   * `series`: [{ name, color }]; `format(value)` renders values for the axis and legend;
   * `base` 1024 for sizes, so the axis tops are round in KiB, MiB, GiB.
   */
  constructor(container, { id, title, series, format, base = 10, pointsMax = 120 }) {
    this.series = series;
    this.base = base;
    this.format = format;
    this.pointsMax = pointsMax;
    this.samples = [];
    this.count = 0;
    const figure = document.createElement('figure');
    figure.className = 'chart';
    const caption = document.createElement('figcaption');
    const heading = document.createElement('span');
    heading.textContent = title;
    this.legend = document.createElement('span');
    this.legend.className = 'legend';
    caption.append(heading, this.legend);
    this.svg = svgElement('svg', {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: 'img',
      'aria-label': title,
      'data-chart': id,
      'data-points': 0,
    });
    figure.append(caption, this.svg);
    container.append(figure);
    this.draw();
  }

  /** Adds one sample: `values[i]` for `series[i]`. */
  push(values) {
    this.samples.push(values);
    if (this.samples.length > this.pointsMax) this.samples.shift();
    this.count += 1;
    this.svg.dataset.points = String(this.count);
    this.svg.dataset.peak = String(Math.max(0, ...this.samples.flat()));
    this.draw();
  }

  draw() {
    const plotWidth = WIDTH - PAD.left - PAD.right;
    const plotHeight = HEIGHT - PAD.top - PAD.bottom;
    const peak = Math.max(0, ...this.samples.flat());
    const top = roundUp(peak, this.base);
    const x = (index) => PAD.left + (index / Math.max(1, this.pointsMax - 1)) * plotWidth;
    const y = (value) => PAD.top + plotHeight - (value / top) * plotHeight;
    const parts = [];
    for (const fraction of [0, 0.5, 1]) {
      const level = PAD.top + plotHeight - fraction * plotHeight;
      parts.push(
        svgElement('line', {
          class: 'grid',
          x1: PAD.left,
          x2: WIDTH - PAD.right,
          y1: level,
          y2: level,
        }),
      );
      const label = svgElement('text', { class: 'axis', x: PAD.left - 6, y: level + 4 });
      label.textContent = this.format(top * fraction);
      parts.push(label);
    }
    // Right-aligned: the newest sample is at the right edge, older ones scroll left.
    const offset = this.pointsMax - this.samples.length;
    this.series.forEach((series, index) => {
      if (this.samples.length === 0) return;
      const points = this.samples
        .map((values, i) => `${x(offset + i).toFixed(1)},${y(values[index] ?? 0).toFixed(1)}`)
        .join(' ');
      const line = svgElement('polyline', { class: 'line', points, fill: 'none' });
      // Through the CSSOM: the colours are CSS variables, which presentation attributes lack.
      line.style.stroke = series.color;
      parts.push(line);
    });
    const note = svgElement('text', { class: 'axis', x: WIDTH - PAD.right, y: HEIGHT - 4 });
    note.setAttribute('text-anchor', 'end');
    note.textContent = `last ${this.pointsMax} s`;
    parts.push(note);
    this.svg.replaceChildren(...parts);
    this.drawLegend();
  }

  drawLegend() {
    const latest = this.samples[this.samples.length - 1] ?? [];
    this.legend.replaceChildren(
      ...this.series.map((series, index) => {
        const item = document.createElement('span');
        item.className = 'key';
        item.style.setProperty('--key', series.color);
        item.textContent = `${series.name} ${this.format(latest[index] ?? 0)}`;
        return item;
      }),
    );
  }
}

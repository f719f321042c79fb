// krakenbook explorer: plain JavaScript, no build step, no third-party code.
// Everything from the API is put on the page with textContent or as SVG attributes, never as
// HTML. Prices and quantities stay the API's exact decimal strings on screen; they become
// numbers only to place pixels.
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
const CAUSE_COLORS = {
  verified: '#2e9e5b',
  mismatch: '#d92d20',
  connection_lost: '#f79009',
  no_collector: '#7a5af8',
  journal_damage: '#1b1f24',
  not_recorded: '#d0d5dd',
  unverified: '#fda29b',
};

const state = {
  view: 'coverage',
  params: new URLSearchParams(),
  symbols: [],
  coverage: null,
  zoom: null, // [startMs, endMs]
  book: null,
  heatmap: null,
  healthTimer: null,
  loads: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = tag.startsWith('svg:') ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// RFC 3339 from the API (microseconds or nanoseconds, always Z) to milliseconds since the epoch.
function ms(ts) {
  if (ts === null || ts === undefined) return null;
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(ts);
  if (!m) return Date.parse(ts);
  const frac = m[2] ? Number('0.' + m[2]) * 1000 : 0;
  return Date.parse(m[1] + 'Z') + frac;
}

// Milliseconds to RFC 3339 with microseconds.
function iso(t) {
  const whole = Math.floor(t);
  const micros = Math.round((t - whole) * 1000);
  const base = new Date(whole).toISOString(); // ...SS.mmmZ
  return base.slice(0, -1) + String(micros).padStart(3, '0') + 'Z';
}

function duration(msLen) {
  if (msLen === null) return 'open';
  const s = msLen / 1000;
  if (s < 1) return (msLen).toFixed(3) + ' ms';
  if (s < 120) return s.toFixed(3) + ' s';
  if (s < 7200) return (s / 60).toFixed(1) + ' min';
  if (s < 172800) return (s / 3600).toFixed(2) + ' h';
  return (s / 86400).toFixed(2) + ' d';
}

function showError(text) {
  const e = $('error');
  if (text) {
    e.textContent = text;
    e.hidden = false;
  } else {
    e.textContent = '';
    e.hidden = true;
  }
}

// One request to the API; refusals come back as {"error","param"}.
async function api(path, params) {
  const q = new URLSearchParams(params || {}).toString();
  state.loads++;
  document.body.dataset.ready = 'no';
  try {
    const r = await fetch('/api/' + path + (q ? '?' + q : ''), { headers: { Accept: 'application/json' } });
    const body = await r.json();
    if (!r.ok) {
      const what = body.param ? body.param + ': ' : '';
      throw new Error(what + (body.error || r.statusText));
    }
    return body;
  } finally {
    state.loads--;
  }
}

function ready(view) {
  if (state.loads === 0) document.body.dataset.ready = view;
}

// The hash: #view?symbol=...&at=...
function readHash() {
  const h = location.hash.replace(/^#/, '');
  const [view, query] = h.split('?');
  state.view = ['coverage', 'book', 'heatmap', 'health'].includes(view) ? view : 'coverage';
  state.params = new URLSearchParams(query || '');
}

function writeHash(params) {
  const p = new URLSearchParams(params);
  const sym = $('symbol').value;
  if (sym) p.set('symbol', sym);
  const h = '#' + state.view + (p.toString() ? '?' + p.toString() : '');
  if (location.hash !== h) history.replaceState(null, '', h);
}

function go(view, params) {
  const p = new URLSearchParams(params || {});
  if (!p.has('symbol') && $('symbol').value) p.set('symbol', $('symbol').value);
  location.hash = '#' + view + '?' + p.toString();
}

async function route() {
  readHash();
  for (const v of ['coverage', 'book', 'heatmap', 'health']) {
    $('view-' + v).hidden = v !== state.view;
    $('nav-' + v).classList.toggle('active', v === state.view);
  }
  if (state.healthTimer) {
    clearInterval(state.healthTimer);
    state.healthTimer = null;
  }
  const sym = state.params.get('symbol');
  if (sym && state.symbols.includes(sym)) $('symbol').value = sym;
  showError('');
  try {
    if (state.view === 'coverage') await showCoverage();
    else if (state.view === 'book') await showBook();
    else if (state.view === 'heatmap') await showHeatmap();
    else await showHealth();
  } catch (e) {
    showError(e.message);
  }
  ready(state.view);
}

// ---------- coverage ----------

async function loadCoverage(symbol) {
  if (!state.coverage || state.coverage.symbol !== symbol) {
    state.coverage = await api('coverage', { symbol });
    state.zoom = null;
  }
  return state.coverage;
}

function coverageBounds(c) {
  let lo = ms(c.first);
  let hi = ms(c.last);
  for (const g of c.gaps) {
    if (g.start) lo = Math.min(lo, ms(g.start));
    if (g.end) hi = Math.max(hi, ms(g.end));
  }
  for (const s of c.spans) {
    lo = Math.min(lo, ms(s.start));
    hi = Math.max(hi, ms(s.end));
  }
  if (!(hi > lo)) hi = lo + 1000;
  return [lo, hi];
}

async function showCoverage() {
  const symbol = $('symbol').value;
  if (!symbol) return;
  const c = await loadCoverage(symbol);
  const [lo, hi] = coverageBounds(c);
  const pad = (hi - lo) * 0.02;
  if (!state.zoom) {
    const from = ms(state.params.get('from') || '');
    const to = ms(state.params.get('to') || '');
    state.zoom = from && to && to > from ? [from, to] : [lo - pad, hi + pad];
  }
  drawCoverage();
  const tbody = $('cov-gaps').querySelector('tbody');
  tbody.replaceChildren();
  for (const g of c.gaps) {
    const tr = el('tr', { class: 'gap-row', 'data-cause': g.cause });
    tr.append(
      el('td', { class: 'text' }, g.start || 'since ever'),
      el('td', { class: 'text' }, g.end || 'not yet'),
      el('td', {}, g.start && g.end ? duration(ms(g.end) - ms(g.start)) : 'open'),
      el('td', { class: 'text cause' }, g.cause),
      el('td', { class: 'text' }, g.after ? g.after.collector + ' #' + g.after.conn_id : ''),
    );
    tr.addEventListener('click', () => {
      const a = g.start ? ms(g.start) : lo;
      const b = g.end ? ms(g.end) : hi;
      const w = Math.max(b - a, 1000);
      state.zoom = [a - w, b + w];
      drawCoverage();
    });
    tbody.append(tr);
  }
  const verified = c.spans.reduce((sum, s) => sum + (ms(s.end) - ms(s.start)), 0);
  const inner = c.gaps.filter((g) => g.start && g.end);
  $('cov-summary').textContent = `${c.symbol}: recorded ${c.first} .. ${c.last}; ${c.streams.length} streams; `
    + `${c.spans.length} verified spans (${duration(verified)}); ${inner.length} gaps inside the record`;
  $('cov-summary').dataset.gaps = String(inner.length);
  $('cov-summary').dataset.spans = String(c.spans.length);
  const legend = $('cov-legend');
  legend.replaceChildren();
  for (const [k, v] of Object.entries(CAUSE_COLORS)) {
    if (k === 'unverified') continue;
    const i = el('i');
    i.style.background = v;
    const s = el('span');
    s.append(i, document.createTextNode(k === 'verified' ? 'verified' : k.replace(/_/g, ' ')));
    legend.append(s);
  }
}

function niceStep(spanMs, target) {
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5,
    9e5, 18e5, 36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5, 2592e6];
  for (const s of steps) if (spanMs / s <= target) return s;
  return 2592e6;
}

function tickLabel(t, step) {
  const s = new Date(Math.floor(t)).toISOString();
  if (step < 1000) return s.slice(11, 23);
  if (step < 60000) return s.slice(11, 19);
  if (step < 86400000) return s.slice(5, 16).replace('T', ' ');
  return s.slice(0, 10);
}

function drawCoverage() {
  const c = state.coverage;
  const svg = $('cov-svg');
  const W = svg.clientWidth || 1100;
  const left = 150;
  const rowH = 22;
  const rows = 1 + c.streams.length;
  const H = 30 + rows * (rowH + 6) + 10;
  svg.setAttribute('height', H);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const [a, b] = state.zoom;
  const x = (t) => left + ((t - a) / (b - a)) * (W - left - 10);
  const clampX = (t) => Math.max(left, Math.min(W - 10, x(t)));
  // Axis.
  const step = niceStep(b - a, 8);
  for (let t = Math.ceil(a / step) * step; t <= b; t += step) {
    const xx = x(t);
    svg.append(el('svg:line', { x1: xx, x2: xx, y1: 18, y2: H - 4, stroke: '#eaecf0' }));
    svg.append(el('svg:text', { x: xx + 2, y: 12, 'font-size': 10, fill: '#555' }, tickLabel(t, step)));
  }
  const drawRow = (i, label, spans, gaps, kind) => {
    const y = 24 + i * (rowH + 6);
    svg.append(el('svg:text', { x: 4, y: y + 15, 'font-size': 11, fill: '#222' }, label));
    for (const g of gaps) {
      const gs = g.start ? ms(g.start) : a - 1;
      const ge = g.end ? ms(g.end) : b + 1;
      if (ge < a || gs > b) continue;
      const x0 = clampX(gs);
      const w = Math.max(clampX(ge) - x0, 1.5);
      const r = el('svg:rect', { x: x0, y, width: w, height: rowH, fill: CAUSE_COLORS[g.cause] || '#999', class: 'gap ' + kind, 'data-cause': g.cause });
      r.append(el('svg:title', {}, `${g.cause}: ${g.start || 'since ever'} .. ${g.end || 'not yet'}`));
      svg.append(r);
    }
    for (const s of spans) {
      const ss = ms(s.start);
      const se = ms(s.end);
      if (se < a || ss > b) continue;
      const x0 = clampX(ss);
      const w = Math.max(clampX(se) - x0, 1.5);
      const r = el('svg:rect', { x: x0, y, width: w, height: rowH, fill: CAUSE_COLORS.verified, class: 'span ' + kind });
      r.append(el('svg:title', {}, `verified ${s.start} .. ${s.end}` + (s.ended_by ? ` (ended by ${s.ended_by})` : '')));
      svg.append(r);
    }
  };
  drawRow(0, 'all streams', c.spans, c.gaps, 'union');
  c.streams.forEach((s, i) => {
    drawRow(i + 1, `${s.stream.collector.slice(0, 14)} #${s.stream.conn_id}`, s.spans, s.gaps, 'stream');
  });
  $('cov-range').textContent = `${iso(a)} .. ${iso(b)} (${duration(b - a)})`;
  svg.dataset.from = iso(a);
  svg.dataset.to = iso(b);
}

function zoomCoverage(factor, centerMs) {
  if (!state.zoom) return;
  const [a, b] = state.zoom;
  const c = centerMs === undefined ? (a + b) / 2 : centerMs;
  let w = (b - a) * factor;
  w = Math.max(w, 1); // one millisecond wide at the closest
  const f = (c - a) / (b - a);
  state.zoom = [c - w * f, c + w * (1 - f)];
  drawCoverage();
}

function coverageTimeAt(evt) {
  const svg = $('cov-svg');
  const rect = svg.getBoundingClientRect();
  const W = svg.clientWidth || 1100;
  const left = 150;
  const px = evt.clientX - rect.left;
  const [a, b] = state.zoom;
  return a + ((px - left) / (W - left - 10)) * (b - a);
}

function wireCoverage() {
  const svg = $('cov-svg');
  svg.addEventListener('wheel', (e) => {
    e.preventDefault();
    zoomCoverage(e.deltaY > 0 ? 1.25 : 0.8, coverageTimeAt(e));
  }, { passive: false });
  let drag = null;
  svg.addEventListener('mousedown', (e) => {
    drag = { x: e.clientX, zoom: state.zoom.slice(), moved: false };
  });
  window.addEventListener('mousemove', (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x;
    if (Math.abs(dx) > 3) drag.moved = true;
    const W = svg.clientWidth || 1100;
    const [a, b] = drag.zoom;
    const dt = (dx / (W - 160)) * (b - a);
    state.zoom = [a - dt, b - dt];
    drawCoverage();
  });
  window.addEventListener('mouseup', (e) => {
    if (drag && !drag.moved && e.target.closest && e.target.closest('#cov-svg')) {
      const t = coverageTimeAt(e);
      go('book', { at: iso(t) });
    }
    drag = null;
  });
  for (const b of document.querySelectorAll('[data-zoom]')) {
    b.addEventListener('click', () => {
      const z = b.dataset.zoom;
      if (z === 'all') {
        state.zoom = null;
        showCoverage();
        return;
      }
      const [a, bb] = state.zoom;
      const mid = (a + bb) / 2;
      state.zoom = [mid - Number(z) / 2, mid + Number(z) / 2];
      drawCoverage();
    });
  }
  $('cov-in').addEventListener('click', () => zoomCoverage(0.5));
  $('cov-out').addEventListener('click', () => zoomCoverage(2));
}

// ---------- book ----------

async function showBook() {
  const symbol = $('symbol').value;
  if (!symbol) return;
  let at = state.params.get('at');
  if (!at) {
    const c = await loadCoverage(symbol);
    const last = c.spans.length ? c.spans[c.spans.length - 1] : null;
    at = last ? iso(ms(last.end) - 1) : c.last;
  }
  $('book-at').value = at;
  const depth = state.params.get('depth') || $('book-depth').value || '25';
  $('book-depth').value = depth;
  const book = await api('book', { symbol, at, depth });
  renderBook(book);
}

function renderBook(b) {
  state.book = b;
  const status = $('book-status');
  status.dataset.verified = String(b.verified);
  if (b.gap) {
    status.dataset.cause = b.gap.cause;
    status.textContent = `GAP (${b.gap.cause}): no verified book from ${b.gap.start || 'the beginning'} to ${b.gap.end || 'the end of the record'}`
      + (b.gap.last_verified_at ? `; the last verified book before it is at ${b.gap.last_verified_at}` : '');
  } else {
    delete status.dataset.cause;
    status.textContent = b.verified
      ? `verified: checksum ${b.checksum} reproduced`
      : `NOT VERIFIED: the rebuilt book does not reproduce Kraken's checksum ${b.checksum}`;
  }
  $('book-source').textContent = b.gap ? `${b.symbol} at ${b.at}` : `${b.symbol} at ${b.at}: last message ${b.last_message_at} (seq ${b.last_seq}) on ${b.collector} connection ${b.conn_id}, `
    + `rebuilt from the ${b.started_from} of ${b.started_at} + ${b.messages_applied} messages; spread ${b.spread}`;
  $('book-prev').disabled = !!b.gap;
  $('book-next').disabled = !!b.gap;
  const tbody = $('book-ladder').querySelector('tbody');
  tbody.replaceChildren();
  const cum = (levels) => {
    let sum = 0;
    return levels.map((l) => { sum += Number(l.qty); return sum; });
  };
  const askCum = cum(b.asks);
  for (let i = b.asks.length - 1; i >= 0; i--) {
    const tr = el('tr', { class: 'ask' });
    tr.append(el('td', { class: 'text' }, 'ask'), el('td', {}, b.asks[i].price), el('td', {}, b.asks[i].qty), el('td', {}, askCum[i].toPrecision(8)));
    tbody.append(tr);
  }
  if (!b.gap) {
    const mid = el('tr', { class: 'mid' });
    mid.append(el('td', { colspan: 4 }, `spread ${b.spread}`));
    tbody.append(mid);
  }
  const bidCum = cum(b.bids);
  b.bids.forEach((l, i) => {
    const tr = el('tr', { class: 'bid' });
    tr.append(el('td', { class: 'text' }, 'bid'), el('td', {}, l.price), el('td', {}, l.qty), el('td', {}, bidCum[i].toPrecision(8)));
    tbody.append(tr);
  });
  drawDepth(b, bidCum, askCum);
}

function drawDepth(b, bidCum, askCum) {
  const svg = $('book-depth-chart');
  svg.replaceChildren();
  const W = 560;
  const H = 360;
  if (!b.bids.length && !b.asks.length) {
    svg.append(el('svg:text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#777' }, b.gap ? 'no book in a gap' : 'empty book'));
    return;
  }
  const prices = b.bids.map((l) => Number(l.price)).concat(b.asks.map((l) => Number(l.price)));
  const lo = Math.min(...prices);
  const hi = Math.max(...prices);
  const top = Math.max(bidCum[bidCum.length - 1] || 0, askCum[askCum.length - 1] || 0) || 1;
  const x = (p) => 40 + ((p - lo) / ((hi - lo) || 1)) * (W - 60);
  const y = (q) => H - 30 - (q / top) * (H - 50);
  const path = (levels, cumul, side) => {
    if (!levels.length) return;
    let d = `M ${x(Number(levels[0].price))} ${y(0)}`;
    levels.forEach((l, i) => {
      const px = x(Number(l.price));
      d += ` L ${px} ${y(i ? cumul[i - 1] : 0)} L ${px} ${y(cumul[i])}`;
    });
    const last = x(Number(levels[levels.length - 1].price));
    d += ` L ${last} ${y(0)} Z`;
    svg.append(el('svg:path', { d, fill: side === 'bid' ? 'rgba(6,118,71,0.35)' : 'rgba(180,35,24,0.35)', stroke: side === 'bid' ? '#067647' : '#b42318', class: 'depth-' + side }));
  };
  path(b.bids, bidCum, 'bid');
  path(b.asks, askCum, 'ask');
  svg.append(el('svg:line', { x1: 40, x2: W - 20, y1: H - 30, y2: H - 30, stroke: '#888' }));
  svg.append(el('svg:text', { x: 40, y: H - 12, 'font-size': 10, fill: '#444' }, b.bids.length ? b.bids[b.bids.length - 1].price : ''));
  svg.append(el('svg:text', { x: W - 20, y: H - 12, 'font-size': 10, fill: '#444', 'text-anchor': 'end' }, b.asks.length ? b.asks[b.asks.length - 1].price : ''));
  svg.append(el('svg:text', { x: 44, y: 16, 'font-size': 10, fill: '#444' }, 'cumulative quantity ' + top.toPrecision(6)));
}

async function stepBook(dir) {
  const b = state.book;
  if (!b || b.gap) return;
  showError('');
  try {
    const params = { symbol: b.symbol, collector: b.collector, conn_id: b.conn_id, seq: b.last_seq, dir, depth: $('book-depth').value };
    // Where the stream was archived, the server loads the rows from this instant on.
    if (b.last_message_at) params.at = b.last_message_at;
    const next = await api('step', params);
    $('book-at').value = next.at;
    renderBook(next);
    writeHash({ at: next.at, depth: $('book-depth').value });
  } catch (e) {
    showError(e.message);
  }
  ready('book');
}

function wireBook() {
  $('book-load').addEventListener('click', () => go('book', { at: $('book-at').value.trim(), depth: $('book-depth').value }));
  $('book-prev').addEventListener('click', () => stepBook('prev'));
  $('book-next').addEventListener('click', () => stepBook('next'));
  window.addEventListener('keydown', (e) => {
    if (state.view !== 'book' || e.target.tagName === 'INPUT') return;
    if (e.key === 'ArrowRight') stepBook('next');
    if (e.key === 'ArrowLeft') stepBook('prev');
  });
}

// ---------- heatmap ----------

async function showHeatmap() {
  const symbol = $('symbol').value;
  if (!symbol) return;
  let from = state.params.get('from');
  let to = state.params.get('to');
  if (!from || !to) {
    const c = await loadCoverage(symbol);
    const end = ms(c.last);
    const start = Math.max(ms(c.first), end - 3600e3);
    from = iso(start);
    to = iso(end);
  }
  $('hm-from').value = from;
  $('hm-to').value = to;
  const depth = state.params.get('depth') || $('hm-depth').value || '100';
  $('hm-depth').value = depth;
  const canvas = $('hm-canvas');
  const columns = Math.max(10, Math.min(2000, Math.floor((canvas.width - 80) / 2)));
  $('hm-summary').textContent = 'building…';
  const map = await api('heatmap', { symbol, from, to, columns, depth });
  state.heatmap = map;
  drawHeatmap(map);
}

function heat(v) {
  // Dark blue to yellow.
  const stops = [[8, 16, 48], [40, 60, 160], [20, 160, 180], [240, 220, 60], [255, 255, 200]];
  const p = Math.max(0, Math.min(1, v)) * (stops.length - 1);
  const i = Math.min(Math.floor(p), stops.length - 2);
  const f = p - i;
  const c = stops[i].map((s, k) => Math.round(s + (stops[i + 1][k] - s) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawHeatmap(map) {
  const canvas = $('hm-canvas');
  const ctx = canvas.getContext('2d');
  const W = canvas.width;
  const H = canvas.height;
  const left = 70;
  const bottom = 40;
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, W, H);
  const cols = map.columns;
  const n = cols.length;
  const cw = (W - left - 10) / Math.max(n, 1);
  // The price range: the top levels of every verified column (deep levels would flatten the
  // picture), padded a little.
  let lo = Infinity;
  let hi = -Infinity;
  let maxQty = 0;
  const near = 25;
  for (const c of cols) {
    if (c.status !== 'verified') continue;
    const b = c.bids[Math.min(c.bids.length, near) - 1];
    const a = c.asks[Math.min(c.asks.length, near) - 1];
    if (b) lo = Math.min(lo, Number(b[0]));
    if (a) hi = Math.max(hi, Number(a[0]));
    for (const l of c.bids.concat(c.asks)) maxQty = Math.max(maxQty, Number(l[1]));
  }
  const verified = cols.filter((c) => c.status === 'verified').length;
  const summary = $('hm-summary');
  summary.dataset.columns = String(n);
  summary.dataset.verified = String(verified);
  summary.dataset.blank = String(n - verified);
  const causes = {};
  for (const c of cols) if (c.status !== 'verified') causes[c.status] = (causes[c.status] || 0) + 1;
  summary.dataset.causes = Object.keys(causes).sort().join(',');
  summary.textContent = `${map.symbol} ${map.from} .. ${map.to}: ${n} columns, ${verified} verified, ${n - verified} blank`
    + (Object.keys(causes).length ? ' (' + Object.entries(causes).map(([k, v]) => `${k}: ${v}`).join(', ') + ')' : '')
    + `; ${map.stats.books_started} books started, ${map.stats.messages_applied} messages applied, built in ${map.stats.millis} ms`;
  if (!(hi > lo)) {
    ctx.fillStyle = '#777';
    ctx.fillText('no verified book in this range', left + 20, H / 2);
    return;
  }
  const pad = (hi - lo) * 0.05;
  lo -= pad;
  hi += pad;
  const plotH = H - bottom - 10;
  const y = (p) => 10 + (1 - (p - lo) / (hi - lo)) * plotH;
  const logMax = Math.log1p(maxQty);
  // The price tick: the smallest gap between adjacent levels of any verified column.
  let tick = Infinity;
  for (const c of cols) {
    if (c.status !== 'verified') continue;
    for (const side of [c.bids, c.asks]) {
      for (let k = 1; k < side.length; k++) {
        const d = Math.abs(Number(side[k][0]) - Number(side[k - 1][0]));
        if (d > 0) tick = Math.min(tick, d);
      }
    }
  }
  const cell = Math.max(2, Math.min(12, Number.isFinite(tick) ? (tick / (hi - lo)) * plotH : 2));
  ctx.fillStyle = '#0b1020';
  ctx.fillRect(left, 10, W - left - 10, plotH);
  cols.forEach((c, i) => {
    const x0 = left + i * cw;
    if (c.status !== 'verified') {
      // A gap: left blank (white), with its cause as a strip under the axis.
      ctx.fillStyle = '#ffffff';
      ctx.fillRect(x0, 10, Math.ceil(cw), plotH);
      ctx.fillStyle = CAUSE_COLORS[c.status] || '#999';
      ctx.fillRect(x0, H - bottom + 2, Math.ceil(cw), 6);
      return;
    }
    // Cells: one price tick high (at least two pixels), centred on the level's price.
    const paint = (levels) => {
      for (const l of levels) {
        const p = Number(l[0]);
        if (p < lo || p > hi) continue;
        ctx.fillStyle = heat(Math.log1p(Number(l[1])) / logMax);
        ctx.fillRect(x0, y(p) - cell / 2, Math.ceil(cw), cell);
      }
    };
    paint(c.bids);
    paint(c.asks);
  });
  // Best bid and ask over it, broken at blank columns.
  const line = (side, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let open = false;
    cols.forEach((c, i) => {
      const lv = side === 'bid' ? c.bids[0] : c.asks[0];
      if (c.status !== 'verified' || !lv) {
        open = false;
        return;
      }
      const yy = y(Number(lv[0]));
      const x0 = left + i * cw;
      if (!open) ctx.moveTo(x0, yy);
      else ctx.lineTo(x0, yy);
      ctx.lineTo(x0 + cw, yy);
      open = true;
    });
    ctx.stroke();
  };
  line('bid', '#32d583');
  line('ask', '#f97066');
  // Axes.
  ctx.fillStyle = '#333';
  ctx.font = '10px sans-serif';
  for (let k = 0; k <= 5; k++) {
    const p = lo + ((hi - lo) * k) / 5;
    ctx.fillText(p.toPrecision(7), 2, y(p) + 3);
  }
  const t0 = ms(map.from);
  const t1 = ms(map.to);
  const step = niceStep(t1 - t0, 6);
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    const xx = left + ((t - t0) / (t1 - t0)) * (W - left - 10);
    ctx.fillText(tickLabel(t, step), xx, H - bottom + 22);
  }
}

function wireHeatmap() {
  $('hm-load').addEventListener('click', () => go('heatmap', { from: $('hm-from').value.trim(), to: $('hm-to').value.trim(), depth: $('hm-depth').value }));
  $('hm-canvas').addEventListener('click', (e) => {
    const map = state.heatmap;
    if (!map) return;
    const canvas = $('hm-canvas');
    const rect = canvas.getBoundingClientRect();
    const px = ((e.clientX - rect.left) * canvas.width) / rect.width;
    const cw = (canvas.width - 80) / map.columns.length;
    const i = Math.floor((px - 70) / cw);
    const c = map.columns[i];
    if (c) go('book', { at: c.t });
  });
}

// ---------- health ----------

async function showHealth() {
  await refreshHealth();
  state.healthTimer = setInterval(() => refreshHealth().catch((e) => showError(e.message)), 5000);
}

async function refreshHealth() {
  const h = await api('collectors');
  const tbody = $('health-table').querySelector('tbody');
  tbody.replaceChildren();
  for (const c of h.collectors) {
    const tr = el('tr', { 'data-status': c.status, 'data-collector': c.collector });
    const badge = el('span', { class: 'badge ' + c.status }, c.status.replace('_', ' '));
    const status = el('td', { class: 'text' });
    status.append(badge);
    tr.append(
      el('td', { class: 'text' }, c.collector),
      status,
      el('td', { class: 'text' }, `${c.host} / ${c.pid}`),
      el('td', { class: 'text' }, `${c.updated_at} (${duration(c.age_seconds * 1000)} ago)`),
      el('td', { class: 'text' }, c.last_frame_at || '-'),
      el('td', { class: 'text' }, c.last_frame_stored_at || '-'),
      el('td', { class: 'text' }, c.last_verified_at || '-'),
      el('td', {}, c.connections_open),
      el('td', {}, `${c.streams_live} / ${c.symbols}`),
      el('td', {}, c.mismatches),
      el('td', {}, c.reconnects),
      el('td', {}, `${c.lag_records} records, ${c.lag_seconds.toFixed(1)} s`),
      el('td', { class: 'text' }, c.problem || ''),
    );
    tbody.append(tr);
  }
  $('health-summary').textContent = h.collectors.length
    ? `${h.collectors.length} collectors; database time ${h.now}; a row older than ${h.stale_after_seconds} s is not running`
    : 'no collector has published its state to this database yet';
  ready('health');
}

// ---------- start ----------

async function start() {
  wireCoverage();
  wireBook();
  wireHeatmap();
  $('symbol').addEventListener('change', () => {
    state.coverage = null;
    state.zoom = null;
    go(state.view, {});
  });
  window.addEventListener('hashchange', route);
  try {
    const s = await api('symbols');
    state.symbols = s.symbols;
    for (const sym of s.symbols) $('symbol').append(el('option', { value: sym }, sym));
    if (!s.symbols.length) showError('nothing recorded in this database yet');
  } catch (e) {
    showError(e.message);
  }
  await route();
}

document.addEventListener('DOMContentLoaded', start);

// maos dashboard: renders /api/view, refetched on every server-sent `version` event.
// Hand-written, no framework, no build step, nothing fetched from elsewhere. Every piece of
// workspace text goes through textContent (never innerHTML); the pictures are SVG made by
// maos-track with every name escaped, parsed as XML and imported.
'use strict';

const STATUSES = ['pending', 'blocked', 'in_progress', 'review', 'completed', 'failed', 'cancelled'];
const PICTURE_TASKS = 150;

const state = {
  view: null,
  tasks: { offset: 0, limit: 100, status: '', agent: '', q: '' },
  locks: { offset: 0, limit: 100, q: '' },
  msgAgent: '',
  tab: 'graph',
  fetching: false,
  again: false,
  clockOffset: 0,
  picturesAt: -1,
  pictureTab: {},
  es: null,
  backoff: 500,
};

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else if (k.startsWith('data-')) e.setAttribute(k, String(v));
      else if (k === 'title') e.title = String(v);
      else if (k === 'onclick') e.addEventListener('click', v);
      else e.setAttribute(k, String(v));
    }
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function human(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 0) ms = 0;
  if (ms < 1000) return ms + 'ms';
  const s = Math.floor(ms / 1000);
  if (s < 10) return (ms / 1000).toFixed(1) + 's';
  if (s < 60) return s + 's';
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

const serverNow = () => Date.now() + state.clockOffset;

function clockTime(ms) {
  if (!ms) return '–';
  const d = new Date(ms);
  return d.toLocaleTimeString();
}

function ago(ms) {
  return ms ? human(serverNow() - ms) + ' ago' : '–';
}

// A countdown cell, kept current by tick().
function countdown(until) {
  const e = el('span', { class: 'countdown', 'data-until': until });
  e.textContent = untilText(until);
  return e;
}

function untilText(until) {
  const left = until - serverNow();
  return left > 0 ? human(left) : 'expired';
}

function tick() {
  for (const e of document.querySelectorAll('[data-until]')) {
    e.textContent = untilText(Number(e.getAttribute('data-until')));
  }
}

function statusPill(s) {
  return el('span', { class: 'status ' + s, text: s.replace('_', ' ') });
}

function notice(text, isError) {
  const n = $('notice');
  n.textContent = text;
  n.className = isError ? 'error' : '';
  n.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Fetching

function viewUrl() {
  const p = new URLSearchParams();
  const t = state.tasks, l = state.locks;
  p.set('tasks_offset', t.offset); p.set('tasks_limit', t.limit);
  if (t.status) p.set('tasks_status', t.status);
  if (t.agent) p.set('tasks_agent', t.agent);
  if (t.q) p.set('tasks_q', t.q);
  p.set('locks_offset', l.offset); p.set('locks_limit', l.limit);
  if (l.q) p.set('locks_q', l.q);
  return '/api/view?' + p.toString();
}

async function refresh() {
  if (state.fetching) { state.again = true; return; }
  state.fetching = true;
  try {
    do {
      state.again = false;
      const r = await fetch(viewUrl(), { cache: 'no-store' });
      if (!r.ok) throw new Error(`${r.status} ${(await r.json().catch(() => ({}))).error || r.statusText}`);
      const v = await r.json();
      state.clockOffset = v.taken_at - Date.now();
      render(v);
    } while (state.again);
  } catch (e) {
    setConn('down', 'cannot load: ' + e.message);
  } finally {
    state.fetching = false;
  }
}

function setConn(cls, text) {
  const c = $('conn');
  c.className = 'conn ' + cls;
  c.textContent = text;
}

function connect() {
  if (state.es) state.es.close();
  const es = new EventSource('/api/events');
  state.es = es;
  es.addEventListener('version', () => {
    state.backoff = 500;
    setConn('live', 'live');
    refresh();
  });
  es.onerror = () => {
    setConn('connecting', 'reconnecting…');
    // The browser retries by itself unless the stream was refused for good; then start over.
    if (es.readyState === EventSource.CLOSED) {
      setTimeout(connect, state.backoff);
      state.backoff = Math.min(state.backoff * 2, 5000);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Rendering

function render(v) {
  const first = !state.view;
  state.view = v;
  $('workspace').textContent = v.workspace;
  $('mode').textContent = v.actions ? `actions on (as ${v.actor})` : 'read-only';
  renderProblems(v);
  renderSummary(v);
  renderAgents(v);
  renderLocks(v);
  renderTasks(v);
  renderMessages(v);
  renderMerges(v);
  $('updated').textContent = `Version ${v.version}, taken ${clockTime(v.taken_at)}.`;
  document.body.dataset.version = String(v.version);
  document.body.dataset.updatedAt = String(Date.now());
  if (first) window.maosFirstRender = performance.now();
  document.dispatchEvent(new CustomEvent('maos:render', { detail: { version: v.version } }));
  if (v.tasks_version !== state.picturesAt) {
    state.picturesAt = v.tasks_version;
    state.pictureTab = {};
    loadPicture(state.tab);
  }
}

function renderProblems(v) {
  const p = $('problems');
  if (!v.problems.length) { p.hidden = true; return; }
  p.replaceChildren(...v.problems.map((x) => el('div', null, el('b', { text: x.section + ': ' }), x.message)));
  p.hidden = false;
}

function card(k, v, s, alert) {
  return el('div', { class: 'card' + (alert ? ' alert' : '') }, el('div', { class: 'k', text: k }),
    el('div', { class: 'v', text: v }), el('div', { class: 's', text: s || '' }));
}

function conflictPairs(m) {
  if (!m.prediction) return [];
  return m.prediction.vs_target.concat(m.prediction.pairwise).filter((p) => p.conflicts.length);
}

function renderSummary(v) {
  const alive = v.agents.filter((a) => a.liveness === 'alive').length;
  const t = v.tasks, c = t.counts;
  const conflicts = conflictPairs(v.merges).length;
  $('summary').replaceChildren(
    card('agents', `${alive}/${v.agents.length}`, 'alive / registered'),
    card('locks', String(v.locks.held), `${v.locks.waiters.length} waiting`),
    card('deadlocks', String(v.locks.deadlocks.length), v.locks.deadlocks.map((d) => d.name).join('; '), v.locks.deadlocks.length > 0),
    card('tasks', `${t.percentage.toFixed(1)}%`, `${c.completed}/${c.total} completed`),
    card('ETA', t.eta ? clockTime(t.eta) : (c.total ? 'done' : '–'), t.eta ? `in ${human(t.remaining_ms)}` : ''),
    card('predicted conflicts', v.merges.prediction ? String(conflicts) : '–', v.merges.state, conflicts > 0),
  );
}

function renderAgents(v) {
  $('agents-count').textContent = `${v.agents.length} registered`;
  const rows = v.agents.map((a) => el('tr', { 'data-agent': a.id, class: a.liveness === 'dead' ? 'dead' : '' },
    el('td', null, el('span', { class: 'live-dot ' + a.liveness }), el('b', { text: a.id })),
    el('td', { text: a.role || '–' }),
    el('td', { text: a.liveness }),
    el('td', { class: 'mono', text: a.anchor ? `${a.anchor.kind} pid ${a.anchor.pid}` : '–' }),
    // A dead agent has no lease left, whatever its record says (its anchor ended).
    el('td', null, a.liveness !== 'dead' && a.lease_until ? countdown(a.lease_until) : '–'),
    el('td', { class: 'mono', text: a.branch || '–' }),
    el('td', { class: 'mono', text: a.worktree || '–' }),
    el('td', null, a.current_task ? el('span', { title: a.current_task.id }, statusPill(a.current_task.status), ' ', a.current_task.name) : '–'),
    el('td', { class: 'num', text: a.locks_held + (a.waiting ? ` (+${a.waiting} waiting)` : '') }),
  ));
  $('agents-table').tBodies[0].replaceChildren(...rows);
  const sel = $('msg-agent'), cur = sel.value;
  const names = new Set(v.agents.map((a) => a.id));
  for (const ch of v.messages) for (const m of ch.recent) names.add(m.sender);
  const opts = [...names].sort().map((n) => el('option', { value: n, text: n }));
  sel.replaceChildren(el('option', { value: '', text: 'every agent' }), ...opts);
  sel.value = names.has(cur) ? cur : '';
  const tsel = $('tasks-agent'), tcur = tsel.value;
  const tnames = Object.keys(v.tasks.by_agent).sort();
  tsel.replaceChildren(el('option', { value: '', text: 'every agent' }), ...tnames.map((n) => el('option', { value: n, text: n })));
  tsel.value = tnames.includes(tcur) ? tcur : '';
}

function pager(id, page, st) {
  const box = $(id);
  const last = Math.min(page.offset + page.rows.length, page.total);
  const prev = el('button', { type: 'button', text: '‹', onclick: () => { st.offset = Math.max(0, st.offset - st.limit); refresh(); } });
  const next = el('button', { type: 'button', text: '›', onclick: () => { st.offset += st.limit; refresh(); } });
  prev.disabled = page.offset === 0;
  next.disabled = last >= page.total;
  box.replaceChildren(prev, `${page.total ? page.offset + 1 : 0}–${last} of ${page.total}`, next);
}

async function act(path, body, what) {
  try {
    const r = await fetch('/api/actions/' + path, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {}),
    });
    const out = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(out.error || r.statusText);
    notice(`${what}: ${out.detail}`);
  } catch (e) {
    notice(`${what} failed: ${e.message}`, true);
  }
}

const SVGNS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// A deadlock drawn as a ring: agents on a circle, an arrow from each waiter to the agent it
// waits for, labelled with the resource.
function drawCycle(d) {
  const n = d.agents.length, R = 70, W = 420, H = 200, cx = W / 2, cy = H / 2;
  const pos = {};
  d.agents.forEach((a, i) => {
    const ang = -Math.PI / 2 + (2 * Math.PI * i) / n;
    pos[a] = [cx + R * 1.6 * Math.cos(ang), cy + R * Math.sin(ang)];
  });
  const root = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'cycle' });
  const defs = svg('defs');
  const marker = svg('marker', { id: 'dl-arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto' });
  marker.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#d62728' }));
  defs.append(marker);
  root.append(defs);
  for (const w of d.waits) {
    const [x1, y1] = pos[w.waiter] || [cx, cy], [x2, y2] = pos[w.holder] || [cx, cy];
    const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1;
    const sx = x1 + (dx / len) * 34, sy = y1 + (dy / len) * 16, ex = x2 - (dx / len) * 34, ey = y2 - (dy / len) * 16;
    const mx = (sx + ex) / 2 - (dy / len) * 18, my = (sy + ey) / 2 + (dx / len) * 18;
    root.append(svg('path', { d: `M${sx},${sy} Q${mx},${my} ${ex},${ey}`, fill: 'none', stroke: '#d62728', 'stroke-width': 2, 'marker-end': 'url(#dl-arrow)' }));
    root.append(svg('text', { x: mx, y: my, 'font-size': 11, fill: '#82071e', 'text-anchor': 'middle' }, w.resource));
  }
  for (const a of d.agents) {
    const [x, y] = pos[a];
    root.append(svg('rect', { x: x - 34, y: y - 13, width: 68, height: 26, rx: 6, fill: a === d.victim ? '#ffebe9' : '#fff', stroke: '#d62728', 'stroke-width': 2 }));
    root.append(svg('text', { x, y: y + 4, 'font-size': 12, 'text-anchor': 'middle', 'font-weight': 700 }, a.length > 10 ? a.slice(0, 9) + '…' : a));
  }
  return root;
}

function renderLocks(v) {
  const L = v.locks;
  $('locks-count').textContent = `${L.held} held, ${L.waiters.length} waiting`;
  const byTicket = new Map(L.waiters.map((w) => [w.ticket, w]));
  $('deadlocks').replaceChildren(...L.deadlocks.map((d) => el('div', { class: 'deadlock', 'data-deadlock': d.name },
    el('div', null, el('span', { class: 'name', text: 'deadlock: ' + d.name })),
    el('div', { class: 'muted', text: `victim (youngest wait): ${d.victim} waiting for ${d.victim_resource}, ticket ${d.victim_ticket}` }),
    drawCycle(d),
    v.actions ? el('button', { type: 'button', class: 'act', text: 'resolve (abort the victim’s wait)', onclick: () => act('resolve-deadlock', {}, 'resolve deadlock') }) : null,
  )));
  const rows = L.page.rows.map((l) => el('tr', { 'data-resource': l.resource, 'data-owner': l.owner },
    el('td', { class: 'mono', text: l.resource }),
    el('td', { text: l.mode }),
    el('td', null, el('b', { text: l.owner }), l.owner_dead ? el('span', { class: 'muted', text: ' (dead)' }) : null,
      l.pid ? el('span', { class: 'muted', text: ` pid ${l.pid}` }) : el('span', { class: 'muted', text: ' lease' })),
    el('td', { text: l.purpose || '–' }),
    el('td', null, countdown(l.expires_at)),
    el('td', { class: 'num mono', text: l.token }),
    el('td', null, ...l.waiters.map((t, i) => {
      const w = byTicket.get(t);
      return el('span', { class: 'waiter', title: w ? `${w.purpose} (since ${clockTime(w.since)})` : '' }, `${i + 1}. ${w ? w.agent : '#' + t}`);
    })),
    el('td', null, v.actions && l.owner_dead ? el('button', { type: 'button', class: 'act', text: 'release',
      onclick: () => act('release-lock', { resource: l.resource, owner: l.owner, token: l.token }, `release ${l.resource}`) }) : null),
  ));
  $('locks-table').tBodies[0].replaceChildren(...rows);
  pager('locks-pager', L.page, state.locks);
  $('waiters-count').textContent = `(${L.waiters.length})`;
  $('waiters-table').tBodies[0].replaceChildren(...L.waiters.map((w) => el('tr', null,
    el('td', { class: 'num', text: w.ticket }), el('td', { text: w.agent }), el('td', { class: 'mono', text: w.resource }),
    el('td', { text: w.mode }), el('td', { text: human(serverNow() - w.since) }),
    el('td', { text: w.blocked_by.join(', ') || '(queue)' }), el('td', { text: (w.aborted ? '[aborted] ' : '') + w.purpose }))));
}

function renderTasks(v) {
  const t = v.tasks, c = t.counts;
  $('tasks-count').textContent = `${c.total} in total`;
  $('progress-bar').style.width = t.percentage.toFixed(1) + '%';
  $('progress-text').textContent = `${t.percentage.toFixed(1)}% completed (${c.completed}/${c.total})`;
  $('status-counts').replaceChildren(...STATUSES.map((s) => el('button', {
    type: 'button', class: 'chip status ' + s + (state.tasks.status === s ? ' active' : ''), 'data-status': s,
    onclick: () => { state.tasks.status = state.tasks.status === s ? '' : s; state.tasks.offset = 0; $('tasks-status').value = state.tasks.status; refresh(); },
  }, s.replace('_', ' '), el('span', { class: 'count', id: 'count-' + s, text: c[s] ?? 0 }))));
  const sel = $('tasks-status');
  if (sel.options.length === 1) for (const s of STATUSES) sel.append(el('option', { value: s, text: s }));
  $('eta').textContent = t.eta
    ? `ETA ${new Date(t.eta).toLocaleString()} (work left along the longest chain: ${human(t.remaining_ms)})`
    : (c.total ? 'Nothing left to do.' : 'No tasks yet.');
  $('critical-total').textContent = t.critical_path.length ? `(${t.critical_path.length} tasks, ${human(t.critical_path_ms)} estimated)` : '';
  $('critical-path').replaceChildren(...t.critical_path.map((x) => el('li', {
    class: 'crit-task' + (x.status === 'completed' ? ' done' : ''), 'data-id': x.id, title: `${x.id} · ${x.status}${x.assigned_to ? ' · @' + x.assigned_to : ''}`,
  }, x.name)));
  const rows = t.page.rows.map((r) => el('tr', { 'data-id': r.id, 'data-status': r.status },
    el('td', { class: 'mono', text: r.id.slice(0, 13) }),
    el('td', null, statusPill(r.status)),
    el('td', null, r.critical ? el('span', { class: 'crit-mark', title: 'on the critical path', text: '● ' }) : null, r.name),
    el('td', { text: r.assigned_to || '–' }),
    el('td', { text: r.priority }),
    el('td', { text: r.estimate_ms !== null ? human(r.estimate_ms) : '–' }),
    el('td', { text: r.started_at ? ago(r.started_at) : '–' }),
    el('td', { class: 'num', text: r.dependencies }),
    el('td', { text: r.blocked_reason || r.note || '' }),
    el('td', null, v.actions && r.status === 'failed' ? el('button', { type: 'button', class: 'act', text: 'reset',
      onclick: () => act('reset-task', { id: r.id }, `reset ${r.name}`) }) : null),
  ));
  $('tasks-table').tBodies[0].replaceChildren(...rows);
  pager('tasks-pager', t.page, state.tasks);
  $('picture-note').textContent = c.total > PICTURE_TASKS
    ? `showing ${PICTURE_TASKS} of ${c.total} tasks: the critical path and its neighbourhood` : '';
}

async function loadPicture(kind) {
  if (state.pictureTab[kind] === state.picturesAt) return;
  state.pictureTab[kind] = state.picturesAt;
  const box = $(kind);
  try {
    const r = await fetch(`/api/${kind}.svg?limit=${PICTURE_TASKS}`, { cache: 'no-store' });
    if (!r.ok) throw new Error(r.statusText);
    const doc = new DOMParser().parseFromString(await r.text(), 'image/svg+xml');
    if (doc.querySelector('parsererror')) throw new Error('the picture is not valid SVG');
    box.replaceChildren(document.importNode(doc.documentElement, true));
    if (window.maosFirstPicture === undefined) window.maosFirstPicture = performance.now();
    document.dispatchEvent(new CustomEvent('maos:picture', { detail: { kind } }));
  } catch (e) {
    box.replaceChildren(el('p', { class: 'muted', text: `cannot load the ${kind}: ${e.message}` }));
  }
}

function renderMessages(v) {
  const who = state.msgAgent;
  const cards = [];
  for (const ch of v.messages) {
    const msgs = ch.recent.filter((m) => !who || m.sender === who || m.to_agents.includes(who));
    if (who && !msgs.length) continue;
    cards.push(el('div', { class: 'channel', 'data-channel': ch.name },
      el('h4', null, el('span', { class: 'kind', text: ch.kind }), el('span', { class: 'mono', text: ch.topic || ch.name }),
        el('span', { class: 'muted', text: `${ch.total} message${ch.total === 1 ? '' : 's'}` })),
      ...msgs.slice(-8).reverse().map((m) => el('div', { class: 'msg', title: `#${m.position} at ${new Date(m.timestamp).toLocaleString()}` },
        el('span', { class: 'who', text: m.sender }), el('span', { class: 'muted', text: ` → ${m.to} · ${clockTime(m.timestamp)}: ` }), m.summary)),
    ));
  }
  $('channels').replaceChildren(...(cards.length ? cards : [el('p', { class: 'muted', text: 'No messages.' })]));
}

function renderMerges(v) {
  const m = v.merges;
  $('merges-state').textContent = m.state === 'ready'
    ? `into ${m.target}${m.pairwise_skipped ? ' (branches checked against the target only: too many for pairs)' : ''}`
    : m.state === 'pending' ? '(predicting…)' : `(${m.error || m.state})`;
  const table = $('merge-matrix');
  if (!m.prediction || !m.branches.length) {
    table.replaceChildren(el('tbody', null, el('tr', null, el('td', { class: 'muted', text: m.prediction ? 'No agent has a branch (maos agents register --branch …).' : (m.error || 'No prediction yet.') }))));
  } else {
    const p = m.prediction;
    const cell = (r) => {
      if (!r) return el('td', { class: 'self', text: '·' });
      if (!r.conflicts.length) return el('td', { class: 'clean', title: r.relation, text: 'clean' });
      return el('td', { class: 'conflict', 'data-source': r.source, 'data-target': r.target },
        el('b', { text: `${r.conflicts.length} conflict${r.conflicts.length === 1 ? '' : 's'}` }),
        el('ul', null, ...r.conflicts.map((c) => el('li', { title: c.description || '' }, el('span', { class: 'mono', text: c.path }),
          el('span', { class: 'muted', text: ` (${c.kind}${c.regions && c.regions.length ? `, ${c.regions.length} region${c.regions.length === 1 ? '' : 's'}` : ''})` })))));
    };
    const head = el('tr', null, el('th', { text: 'branch ↓ merged into →' }), el('th', { text: m.target }),
      ...(p.pairwise.length ? m.branches.map((b) => el('th', { text: b })) : []));
    const rows = m.branches.map((b) => {
      const vt = p.vs_target.find((r) => r.source === b);
      const pairs = p.pairwise.length ? m.branches.map((o) => o === b ? el('td', { class: 'self', text: '—' })
        : cell(p.pairwise.find((r) => (r.source === b && r.target === o) || (r.source === o && r.target === b)))) : [];
      return el('tr', null, el('th', { class: 'mono', text: b }), cell(vt), ...pairs);
    });
    table.replaceChildren(el('thead', null, head), el('tbody', null, ...rows));
  }
  $('queue-table').tBodies[0].replaceChildren(...(m.queue.length ? m.queue.map((q) => el('tr', null,
    el('td', { class: 'num', text: q.id }), el('td', { class: 'mono', text: q.source }), el('td', { class: 'mono', text: q.target }),
    el('td', { text: q.status }), el('td', { class: 'num', text: q.attempts }),
    el('td', { class: 'mono', text: q.conflicted_paths.join(', ') || (q.error || '') }), el('td', { text: q.requested_by }),
    el('td', { text: ago(q.updated_at) }))) : [el('tr', null, el('td', { class: 'muted', text: 'The merge queue is empty.' }))]));
}

// ---------------------------------------------------------------------------------------------
// Wiring

function debounce(f, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); };
}

function wire() {
  $('locks-q').addEventListener('input', debounce((e) => { state.locks.q = e.target.value; state.locks.offset = 0; refresh(); }, 200));
  $('tasks-q').addEventListener('input', debounce((e) => { state.tasks.q = e.target.value; state.tasks.offset = 0; refresh(); }, 200));
  $('tasks-status').addEventListener('change', (e) => { state.tasks.status = e.target.value; state.tasks.offset = 0; refresh(); });
  $('tasks-agent').addEventListener('change', (e) => { state.tasks.agent = e.target.value; state.tasks.offset = 0; refresh(); });
  $('msg-agent').addEventListener('change', (e) => { state.msgAgent = e.target.value; if (state.view) renderMessages(state.view); });
  for (const b of document.querySelectorAll('.tab')) {
    b.addEventListener('click', () => {
      state.tab = b.dataset.tab;
      for (const o of document.querySelectorAll('.tab')) o.classList.toggle('active', o === b);
      $('graph').hidden = state.tab !== 'graph';
      $('gantt').hidden = state.tab !== 'gantt';
      loadPicture(state.tab);
    });
  }
  setInterval(tick, 1000);
  connect();
}

document.addEventListener('DOMContentLoaded', wire);

// The ranking page: the paper's two steps (ratings and flags per completion, then a ranking of
// all K with ties), driven entirely by the keyboard (mouse controls mirror every key). Plain
// browser JavaScript, no build step, nothing loaded from the network.
'use strict';

const FLAG_KEYS = {f: 'fails_instruction', i: 'inappropriate', h: 'hallucination',
                   c: 'satisfies_constraint'};
const OPTIONAL = ['hallucination', 'satisfies_constraint'];  // null = not applicable
const $ = (id) => document.getElementById(id);

// The token travels in the URL fragment (never sent to the server or logged) and is kept for
// this tab only; the name is kept per browser so a returning labeler resumes.
const page = {
  token: null, labeler: null, view: null, step: 'rate', cur: 0, busy: false,
  likert: [], flags: [], pos: [],
};

function readToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem('rlhf_jax_token', decodeURIComponent(match[1]));
    history.replaceState(null, '', location.pathname);
  }
  return sessionStorage.getItem('rlhf_jax_token');
}

async function api(method, path, body) {
  const headers = {};
  if (page.token) headers.Authorization = 'Bearer ' + page.token;
  const options = {method, headers};
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || String(response.status));
  return data;
}

function say(text, ok) {
  $('message').textContent = text || '';
  $('message').className = ok ? 'ok' : '';
}

function show(section) {
  for (const id of ['login', 'work', 'done']) $(id).hidden = id !== section;
}

function load(view) {
  page.view = view;
  page.step = 'rate';
  page.cur = 0;
  const task = view.task;
  renderProgress();
  if (!task) { show('done'); return; }
  const k = task.completions.length;
  const draft = view.draft;
  page.likert = draft ? draft.likert.slice() : Array(k).fill(null);
  page.flags = draft ? draft.flags.map((f) => ({...f})) : Array.from({length: k}, () => (
    {fails_instruction: false, inappropriate: false, hallucination: null,
     satisfies_constraint: null}));
  page.pos = draft ? draft.ranks.map((r) => r + 1) : Array(k).fill(null);
  show('work');
  $('prompt').textContent = task.prompt;
  $('category').textContent = task.category ? '(' + task.category + ')' : '';
  render();
}

function triText(value) { return value === null ? 'n/a' : value ? 'yes' : 'no'; }

function option(select, value, text, selected) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  o.selected = selected;
  select.appendChild(o);
}

function control(label, element) {
  const wrap = document.createElement('label');
  wrap.textContent = label + ' ';
  wrap.appendChild(element);
  return wrap;
}

function selectFor(id, choices, current, onChange) {
  const s = document.createElement('select');
  s.id = id;
  for (const [value, text] of choices) option(s, value, text, value === current);
  s.addEventListener('change', () => { onChange(s.value); render(); });
  return s;
}

function render() {
  const task = page.view.task;
  const k = task.completions.length;
  const rate = page.step === 'rate';
  $('step').textContent = rate
    ? 'Step 1 of 2: rate each completion (1-7) and set its flags, then press Enter.'
    : 'Step 2 of 2: give each completion its position, 1 = best (equal positions tie); ' +
      'Enter submits.';
  $('back').hidden = rate;
  $('go').textContent = rate ? 'Go to ranking (Enter)' : 'Submit (Enter)';
  $('undo').disabled = !page.view.can_undo;
  const cards = $('cards');
  cards.replaceChildren();
  const triChoices = [['null', 'n/a'], ['true', 'yes'], ['false', 'no']];
  for (let i = 0; i < k; i++) {
    const card = document.createElement('li');
    card.id = 'card-' + i;
    card.className = 'card' + (i === page.cur ? ' current' : '');
    card.addEventListener('click', () => { page.cur = i; render(); });
    const head = document.createElement('div');
    head.textContent = 'Completion ' + (i + 1);
    const text = document.createElement('pre');
    text.textContent = task.completions[i] === '' ? '(empty)' : task.completions[i];
    const controls = document.createElement('div');
    controls.className = 'controls';
    const likertChoices = [['', '-']].concat([1, 2, 3, 4, 5, 6, 7].map((v) => [String(v), v]));
    controls.appendChild(control('Likert', selectFor('likert-' + i, likertChoices,
      page.likert[i] === null ? '' : String(page.likert[i]),
      (v) => { page.likert[i] = v === '' ? null : Number(v); })));
    const f = page.flags[i];
    for (const [name, label] of [['fails_instruction', 'fails instruction (f)'],
                                 ['inappropriate', 'inappropriate (i)']]) {
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.id = name + '-' + i;
      box.checked = f[name];
      box.addEventListener('change', () => { f[name] = box.checked; render(); });
      controls.appendChild(control(label, box));
    }
    for (const [name, label] of [['hallucination', 'hallucination (h)'],
                                 ['satisfies_constraint', 'satisfies constraint (c)']]) {
      controls.appendChild(control(label, selectFor(name + '-' + i, triChoices, String(f[name]),
        (v) => { f[name] = JSON.parse(v); })));
    }
    if (!rate) {
      const positions = [['', '-']];
      for (let p = 1; p <= k; p++) positions.push([String(p), p]);
      const s = selectFor('rank-' + i, positions, page.pos[i] === null ? '' : String(page.pos[i]),
        (v) => { page.pos[i] = v === '' ? null : Number(v); });
      s.className = 'rank';
      controls.appendChild(control('position', s));
    }
    const summary = document.createElement('span');
    summary.className = page.likert[i] === null ? 'unset' : '';
    summary.textContent = 'rating ' + (page.likert[i] === null ? 'unset' : page.likert[i]) +
      (OPTIONAL.map((n) => ', ' + n.replace('_', ' ') + ' ' + triText(f[n])).join(''));
    controls.appendChild(summary);
    card.append(head, text, controls);
    cards.appendChild(card);
  }
  const current = $('card-' + page.cur);
  if (current && current.scrollIntoView) current.scrollIntoView({block: 'nearest'});
}

function renderProgress() {
  const p = page.view.progress;
  const mine = p.labelers[page.labeler] || 0;
  const everyone = Object.entries(p.labelers).map(([who, n]) => who + ' ' + n).join(', ');
  $('progress').textContent = p.done + ' / ' + p.total + ' labels done (you: ' + mine +
    (everyone ? '; ' + everyone : '') + ')';
  const a = p.agreement;
  $('agreement').textContent = a.agreement === null ? 'agreement: no overlap labelled yet'
    : 'agreement: ' + Math.round(100 * a.agreement) + '% of ' + a.pairs + ' comparisons on ' +
      a.tasks + ' prompts labelled twice';
  $('who').textContent = page.labeler ? 'labeler: ' + page.labeler : '';
  const list = $('skipped-list');
  list.replaceChildren();
  for (const id of (p.skipped[page.labeler] || [])) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = 'come back to skipped prompt ' + id;
    b.addEventListener('click', () => openTask(id));
    list.appendChild(b);
  }
}

async function call(promise, okText) {
  if (page.busy) return;
  page.busy = true;
  try {
    load(await promise());
    say(okText, true);
  } catch (e) {
    say(e.message);
  } finally {
    page.busy = false;
  }
}

function openTask(id) {
  return call(() => api('GET', '/api/task?labeler=' + encodeURIComponent(page.labeler) +
                        '&id=' + encodeURIComponent(id)), '');
}

function firstUnset(values) { return values.findIndex((v) => v === null); }

function advance() {
  if (page.step === 'rate') {
    const missing = firstUnset(page.likert);
    if (missing >= 0) {
      page.cur = missing;
      render();
      say('Rate completion ' + (missing + 1) + ' first (keys 1-7).');
      return;
    }
    page.step = 'rank';
    page.cur = 0;
    say('');
    render();
    return;
  }
  const missing = firstUnset(page.pos);
  if (missing >= 0) {
    page.cur = missing;
    render();
    say('Give completion ' + (missing + 1) + ' a position first.');
    return;
  }
  const body = {task: page.view.task.id, labeler: page.labeler, likert: page.likert,
                flags: page.flags, ranks: page.pos.map((p) => p - 1)};
  call(() => api('POST', '/api/label', body), 'Saved.');
}

function skip() {
  call(() => api('POST', '/api/skip', {labeler: page.labeler, task: page.view.task.id}),
       'Skipped: it comes back after the others.');
}

function undo() {
  call(() => api('POST', '/api/undo', {labeler: page.labeler}),
       'Your last submission is withdrawn; change it and submit again.');
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey || page.busy) return;
  if (!$('login').hidden) {
    if (e.key === 'Enter' && e.target === $('name')) start($('name').value.trim());
    return;
  }
  const key = e.key;
  if (key === '?') { $('help').open = !$('help').open; e.preventDefault(); return; }
  if (key === 'u') { e.preventDefault(); undo(); return; }
  if (!page.view || !page.view.task) return;
  const k = page.view.task.completions.length;
  const rate = page.step === 'rate';
  const values = rate ? page.likert : page.pos;
  const top = rate ? 7 : k;
  let handled = true;
  if (key === 'j' || key === 'ArrowDown') page.cur = Math.min(k - 1, page.cur + 1);
  else if (key === 'k' || key === 'ArrowUp') page.cur = Math.max(0, page.cur - 1);
  else if (/^[1-9]$/.test(key) && Number(key) <= top) values[page.cur] = Number(key);
  else if (key === '+' || key === '=') {
    values[page.cur] = Math.min(top, (values[page.cur] || 0) + 1);
  }
  else if (key === '-') values[page.cur] = Math.max(1, (values[page.cur] || 2) - 1);
  else if (rate && FLAG_KEYS[key]) {
    const name = FLAG_KEYS[key];
    const f = page.flags[page.cur];
    // Optional flags cycle n/a -> yes -> no -> n/a; the others toggle.
    f[name] = OPTIONAL.includes(name) ? (f[name] === null ? true : f[name] ? false : null)
      : !f[name];
  } else if (key === 'Enter') { e.preventDefault(); advance(); return; }
  else if (key === 'Escape' && !rate) { page.step = 'rate'; page.cur = 0; }
  else if (key === 's') { e.preventDefault(); skip(); return; }
  else if (key === 'b') {
    const skipped = page.view.progress.skipped[page.labeler] || [];
    if (skipped.length) { e.preventDefault(); openTask(skipped[0]); }
    return;
  } else handled = false;
  if (handled) { e.preventDefault(); render(); }
}

function start(name) {
  if (!/^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$/.test(name)) {
    say('Use 1-64 letters, digits, space, _ . @ - for your name.');
    return;
  }
  page.labeler = name;
  localStorage.setItem('rlhf_jax_labeler', name);
  call(() => api('GET', '/api/next?labeler=' + encodeURIComponent(name)), '');
}

document.addEventListener('DOMContentLoaded', () => {
  page.token = readToken();
  document.addEventListener('keydown', onKey);
  $('go').addEventListener('click', advance);
  $('back').addEventListener('click', () => { page.step = 'rate'; render(); });
  $('skip').addEventListener('click', skip);
  $('undo').addEventListener('click', undo);
  $('switch').addEventListener('click', () => {
    localStorage.removeItem('rlhf_jax_labeler');
    page.labeler = null;
    page.view = null;
    show('login');
    $('name').focus();
  });
  const saved = localStorage.getItem('rlhf_jax_labeler');
  if (saved) { start(saved); return; }
  show('login');
  $('name').focus();
});

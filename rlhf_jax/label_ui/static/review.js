// The eval review page: per test prompt every policy's response side by side with the held-out
// labeler's judgment (outcome against SFT, Likert, flags); filters by category and by "lost".
'use strict';

const $ = (id) => document.getElementById(id);
const OUTCOME = {1: 'won', 0.5: 'tie', 0: 'lost'};
const state = {data: null, lostPolicy: null};

function cell(tag, text, className) {
  const c = document.createElement(tag);
  c.textContent = text;
  if (className) c.className = className;
  return c;
}

function judgmentText(j, name, baseline) {
  if (!j) return '';
  const flags = Object.entries(j.flags).filter(([, v]) => v !== null && v !== false)
    .map(([k, v]) => k.replace('_', ' ') + (v === true ? '' : ': ' + v));
  const outcome = name === baseline ? '' : OUTCOME[j.outcome] + ' vs ' + baseline + '; ';
  return outcome + 'Likert ' + j.likert + (flags.length ? '; ' + flags.join(', ') : '');
}

function render() {
  const {data} = state;
  const category = $('category').value;
  const onlyLost = $('lost').checked;
  const rows = $('rows');
  rows.replaceChildren();
  let shown = 0;
  data.prompts.forEach((p, index) => {
    if (category && p.category !== category) return;
    if (onlyLost && !(p.judgments && p.judgments[state.lostPolicy].outcome === 0)) return;
    shown++;
    const tr = document.createElement('tr');
    tr.className = 'prompt-row';
    tr.appendChild(cell('td', '#' + index + ' (' + p.category + ')\n' + p.prompt));
    for (const name of data.policies) {
      const j = p.judgments && p.judgments[name];
      const td = cell('td', '', j && name !== data.baseline ? OUTCOME[j.outcome] : '');
      td.appendChild(cell('pre', p.responses[name]));
      td.appendChild(cell('small', judgmentText(j, name, data.baseline)));
      tr.appendChild(td);
    }
    rows.appendChild(tr);
  });
  $('count').textContent = shown + ' of ' + data.prompts.length + ' prompts';
}

async function main() {
  const match = location.hash.match(/token=([^&]+)/);
  const headers = match ? {Authorization: 'Bearer ' + decodeURIComponent(match[1])} : {};
  const response = await fetch('/api/review', {headers});
  const data = await response.json();
  if (!response.ok) { $('message').textContent = data.error; return; }
  state.data = data;
  // The paper's question is whether PPO-ptx lost; fall back to the last policy evaluated.
  state.lostPolicy = data.policies.includes('ppo_ptx') ? 'ppo_ptx'
    : data.policies[data.policies.length - 1];
  $('lost-policy').textContent = state.lostPolicy;
  $('lost').disabled = !data.judged;
  if (!data.judged) $('message').textContent = 'No per-prompt judgments (see review.py).';
  const win = Object.entries(data.report.policies)
    .map(([n, p]) => n + ' ' + (100 * p.win_rate_vs_sft).toFixed(0) + '%').join(', ');
  $('summary').textContent = data.prompts.length + ' test prompts; win rate vs ' +
    data.baseline + ': ' + win;
  for (const name of data.plots) {
    // Fetched with the token like all data, then shown from memory.
    const plot = await fetch('/api/plots/' + name, {headers});
    const img = document.createElement('img');
    img.src = URL.createObjectURL(await plot.blob());
    img.alt = name;
    $('plots').appendChild(img);
  }
  const head = document.createElement('tr');
  head.appendChild(cell('th', 'prompt'));
  for (const name of data.policies) head.appendChild(cell('th', name));
  $('head').appendChild(head);
  const categories = [...new Set(data.prompts.map((p) => p.category))].sort();
  for (const c of categories) {
    const o = document.createElement('option');
    o.value = c;
    o.textContent = c;
    $('category').appendChild(o);
  }
  $('category').addEventListener('change', render);
  $('lost').addEventListener('change', render);
  render();
}

document.addEventListener('DOMContentLoaded', main);

// Corvus admin console: hand-written, no framework, no build step.
//
// Security rules this file keeps (the console is served with a strict CSP, see
// the HTTP contract):
// - Every string from the server (addresses, trace fields, errors) reaches the
//   page through textContent / createElement, never innerHTML.
// - No inline styles or event handler attributes: classes and addEventListener.
// - The API token lives in sessionStorage only and goes out in the
//   Authorization header; never in a URL, never in a cookie (so the API cannot
//   be driven by a cross-site request).
'use strict';

(() => {
  const API = '../api'; // the console is served at /admin/
  const TOKEN_KEY = 'corvus.admin.token';

  let token = null;
  let routeSeq = 0; // bumps on every navigation; stale async renders check it
  let dashboardTimer = null;
  let tracesSearched = false;
  let sieveUser = ''; // whose scripts the Sieve view shows
  let sieveNames = new Set(); // their names, as last listed
  let sieveEditing = null; // the script open in the editor

  // ---------------------------------------------------------------- DOM helpers

  const $ = (id) => document.getElementById(id);

  // el('tr', {class: 'x', 'data-id': id, text: 'y', on: {click: fn}}, [children])
  function el(tag, opts = {}, children = []) {
    const node = document.createElement(tag);
    setProps(node, opts);
    for (const c of [].concat(children)) {
      if (c !== null && c !== undefined && c !== false) node.append(c);
    }
    return node;
  }

  // SVG elements need their namespace.
  function svg(tag, opts = {}, children = []) {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    setProps(node, opts);
    for (const c of [].concat(children)) if (c) node.append(c);
    return node;
  }

  function setProps(node, opts) {
    for (const [k, v] of Object.entries(opts)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') node.textContent = String(v);
      else if (k === 'class') node.setAttribute('class', v);
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k === 'style' || /^on/i.test(k)) throw new Error('forbidden attribute ' + k);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function button(label, onClick, opts = {}) {
    return el('button', Object.assign({type: 'button', text: label, on: {click: onClick}}, opts));
  }

  function code(text) {
    return el('code', {text: text});
  }

  function muted(text) {
    return el('span', {class: 'muted', text: text});
  }

  function enc(s) {
    return encodeURIComponent(s);
  }

  // "2026-12-07 06:00:00" in local time, from RFC 3339 text or Unix seconds;
  // anything unparsable is shown as it came.
  function fmtTime(v) {
    if (v === null || v === undefined || v === '') return '';
    const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
    if (isNaN(d.getTime())) return String(v);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  // Date and time may wrap onto two lines, but never inside either.
  function timeCell(v) {
    const [date, time] = fmtTime(v).split(' ');
    return el('td', {class: 'time', title: v === null || v === undefined ? null : String(v)},
      [el('span', {class: 'nowrap', text: date}), time ? ' ' : null, time ? el('span', {class: 'nowrap', text: time}) : null]);
  }

  function list(v) {
    return Array.isArray(v) ? v.join(', ') : (v === null || v === undefined ? '' : String(v));
  }

  // Replace a table's body; an empty list shows `emptyText` in one row.
  function fillTable(tableId, rows, emptyText) {
    const table = $(tableId);
    const tbody = table.tBodies[0];
    const cols = table.tHead.rows[0].cells.length;
    tbody.replaceChildren();
    if (rows.length === 0) {
      tbody.append(el('tr', {class: 'empty', 'data-testid': 'empty'},
        el('td', {colspan: cols, class: 'muted', text: emptyText})));
    } else {
      tbody.append(...rows);
    }
  }

  // Any JSON value as nested elements (for fields whose shape is open).
  function renderValue(v) {
    if (v === null || v === undefined) return muted('none');
    if (Array.isArray(v)) {
      if (v.length === 0) return muted('none');
      if (v.every((x) => x === null || typeof x !== 'object')) return document.createTextNode(v.join(', '));
      return el('ol', {class: 'values'}, v.map((x) => el('li', {}, renderValue(x))));
    }
    if (typeof v === 'object') return fieldList(v);
    if (typeof v === 'boolean') return document.createTextNode(v ? 'yes' : 'no');
    return document.createTextNode(String(v));
  }

  // <dl> of an object's fields: those in `order` first (with their labels),
  // then any others the server sent.
  function fieldList(obj, order = []) {
    const dl = el('dl', {class: 'fields'});
    const seen = new Set();
    const add = (key, label) => {
      seen.add(key);
      dl.append(el('dt', {text: label}), el('dd', {'data-field': key}, renderValue(obj[key])));
    };
    for (const [key, label] of order) add(key, label);
    for (const key of Object.keys(obj)) if (!seen.has(key)) add(key, key);
    return dl;
  }

  function badge(text, kind) {
    return el('span', {class: 'badge badge-' + kind, text: text});
  }

  function resultBadge(result) {
    const kinds = {accepted: 'ok', delivered: 'ok', rejected: 'bad', bounced: 'bad',
      tempfailed: 'warn', deferred: 'warn', discarded: 'neutral'};
    return badge(result || 'unknown', kinds[result] || 'neutral');
  }

  // ---------------------------------------------------------------- messages

  function showError(text) {
    $('error-text').textContent = text;
    $('error').hidden = false;
  }

  function showNotice(text) {
    $('notice').textContent = text;
    $('notice').hidden = false;
  }

  function clearMessages() {
    $('error').hidden = true;
    $('error-text').textContent = '';
    $('notice').hidden = true;
    $('notice').textContent = '';
  }

  // Record CSP violations where a test (or a curious admin) can see them.
  function watchCsp() {
    let count = 0;
    document.documentElement.setAttribute('data-csp-violations', '0');
    document.addEventListener('securitypolicyviolation', (e) => {
      count += 1;
      document.documentElement.setAttribute('data-csp-violations', String(count));
      showError(`Blocked by the Content Security Policy: ${e.violatedDirective} ${e.blockedURI || ''}`);
    });
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One API call: JSON in and out; a non-2xx answer throws ApiError with the
  // server's {"error": ...} text.
  async function api(method, path, body, useToken = token) {
    const headers = {Accept: 'application/json', Authorization: 'Bearer ' + useToken};
    const init = {method, headers, cache: 'no-store', credentials: 'omit'};
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, 'cannot reach the server (' + e.message + ')');
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!resp.ok) {
      const msg = data && typeof data.error === 'string' ? data.error : (resp.statusText || 'request failed');
      throw new ApiError(resp.status, msg);
    }
    return data;
  }

  // Run an action, showing its failure; a 401 means the token is no longer
  // good: back to the sign-in screen.
  async function run(action) {
    try {
      return await action();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        signOut(`The server rejected the token (401): ${e.message}. Sign in again.`);
      } else if (e instanceof ApiError) {
        showError(e.status ? `Error ${e.status}: ${e.message}` : `Error: ${e.message}`);
      } else {
        showError('Error: ' + (e && e.message ? e.message : String(e)));
      }
      return undefined;
    }
  }

  // Show the API's "message" of a successful change, or a default.
  function noticeFrom(resp, fallback) {
    showNotice(resp && typeof resp.message === 'string' ? resp.message : fallback);
  }

  // ---------------------------------------------------------------- dialog

  let dialogResolve = null;

  // A modal question. With `input` (a label) it asks for a password and
  // resolves to it; otherwise it resolves to true. Cancel resolves to null.
  function ask({title, message, ok = 'OK', danger = false, input = null}) {
    const dialog = $('dialog');
    $('dialog-title').textContent = title;
    $('dialog-message').textContent = message;
    $('dialog-ok').textContent = ok;
    $('dialog-ok').className = danger ? 'danger' : 'primary';
    $('dialog-field').hidden = !input;
    $('dialog-label').textContent = input || '';
    $('dialog-input').value = '';
    $('dialog-input').required = !!input;
    $('dialog-input').disabled = !input;
    dialog.showModal();
    if (input) $('dialog-input').focus();
    return new Promise((resolve) => { dialogResolve = resolve; });
  }

  function closeDialog(answer) {
    const dialog = $('dialog');
    if (dialog.open) dialog.close();
    if (dialogResolve) {
      const resolve = dialogResolve;
      dialogResolve = null;
      resolve(answer);
    }
  }

  function wireDialog() {
    $('dialog-form').addEventListener('submit', (e) => {
      e.preventDefault();
      closeDialog($('dialog-field').hidden ? true : $('dialog-input').value);
    });
    $('dialog-cancel').addEventListener('click', () => closeDialog(null));
    $('dialog').addEventListener('cancel', (e) => { // Escape key
      e.preventDefault();
      closeDialog(null);
    });
  }

  // ---------------------------------------------------------------- sign-in

  function readStoredToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function storeToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Storage disabled: the token lives in memory for this page only.
    }
  }

  async function onSignIn(e) {
    e.preventDefault();
    const candidate = $('signin-token').value.trim();
    const errorBox = $('signin-error');
    errorBox.hidden = true;
    if (!candidate) return;
    $('signin-submit').disabled = true;
    try {
      await api('GET', '/users', undefined, candidate); // validates the token
      token = candidate;
      storeToken(token);
      $('signin-token').value = '';
      showApp();
    } catch (err) {
      let msg;
      if (err instanceof ApiError && err.status === 401) {
        msg = `Sign-in failed: the token was not accepted (401 Unauthorized: ${err.message}). ` +
          'Check that it was copied whole and has not been revoked.';
      } else if (err instanceof ApiError && err.status === 0) {
        msg = 'Sign-in failed: ' + err.message + '.';
      } else if (err instanceof ApiError) {
        msg = `Sign-in failed: error ${err.status}: ${err.message}`;
      } else {
        msg = 'Sign-in failed: ' + err;
      }
      errorBox.className = 'banner banner-error';
      errorBox.textContent = msg;
      errorBox.hidden = false;
    } finally {
      $('signin-submit').disabled = false;
    }
  }

  // `message` shows under the form, as an error unless `isError` is false.
  function showSignIn(message, isError = true) {
    stopDashboardTimer();
    $('app').hidden = true;
    $('signin').hidden = false;
    const errorBox = $('signin-error');
    errorBox.className = 'banner ' + (isError ? 'banner-error' : 'banner-ok');
    errorBox.textContent = message || '';
    errorBox.hidden = !message;
    $('signin-token').focus();
  }

  function showApp() {
    $('signin').hidden = true;
    $('signin-error').hidden = true;
    $('app').hidden = false;
    route();
  }

  // Forget the token and everything shown with it.
  function signOut(message, isError = true) {
    token = null;
    storeToken(null);
    routeSeq += 1;
    tracesSearched = false;
    clearMessages();
    for (const tbody of document.querySelectorAll('#app tbody')) tbody.replaceChildren();
    for (const id of ['charts', 'queue-detail-fields', 'queue-detail-decisions', 'queue-detail-headers',
      'trace-summary', 'trace-connection', 'trace-sender-auth', 'trace-spam', 'trace-other']) {
      $(id).replaceChildren();
    }
    $('queue-detail').hidden = true;
    $('trace-body').hidden = true;
    closeSieveEditor();
    $('sieve-add-form').reset();
    sieveUser = '';
    sieveNames = new Set();
    showSignIn(message, isError);
  }

  // ---------------------------------------------------------------- routing

  // #/users, #/domains/<domain>/dns, #/trace/<id>, ...
  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    try {
      return raw ? raw.split('/').map(decodeURIComponent) : [];
    } catch (e) {
      return [];
    }
  }

  function route() {
    if (!token) return;
    const [name, arg, sub] = parseHash();
    const seq = ++routeSeq;
    clearMessages();
    stopDashboardTimer();
    if (name === 'users' && arg && sub === 'sieve') return openView('sieve', 'users', () => loadSieve(arg, seq));
    if (name === 'domains' && arg && sub === 'dns') return openView('dns', 'domains', () => loadDns(arg, seq));
    if (name === 'trace' && arg) return openView('trace', 'traces', () => loadTrace(arg, seq));
    const views = {
      users: loadUsers,
      domains: loadDomains,
      aliases: loadAliases,
      dkim: loadDkim,
      queue: loadQueue,
      traces: enterTraces,
      dashboard: enterDashboard,
    };
    const view = views[name] ? name : 'dashboard';
    return openView(view, view, () => views[view](seq));
  }

  // Show one section, mark its nav entry, run its loader with aria-busy set.
  async function openView(view, nav, load) {
    for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== 'view-' + view;
    for (const a of document.querySelectorAll('.sidebar a')) {
      if (a.dataset.view === nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const section = $('view-' + view);
    section.setAttribute('aria-busy', 'true');
    await run(load);
    section.setAttribute('aria-busy', 'false');
  }

  // Reload the current view's data after a change, keeping messages shown.
  async function reload(section, load) {
    section.setAttribute('aria-busy', 'true');
    await run(load);
    section.setAttribute('aria-busy', 'false');
  }

  const stale = (seq) => seq !== undefined && seq !== routeSeq;

  // ---------------------------------------------------------------- users

  async function loadUsers(seq) {
    const users = await api('GET', '/users');
    if (stale(seq)) return;
    fillTable('users-table', users.map(userRow), 'No users yet.');
  }

  function userRow(u) {
    return el('tr', {'data-testid': 'user-row', 'data-address': u.address}, [
      el('td', {class: 'address', text: u.address}),
      el('td', {class: 'actions'}, [
        el('a', {class: 'button', href: '#/users/' + enc(u.address) + '/sieve', text: 'Sieve',
          'data-testid': 'user-sieve', 'aria-label': 'Sieve scripts of ' + u.address}),
        button('Set password', () => setPassword(u.address),
          {'data-testid': 'user-set-password', 'aria-label': 'Set password of ' + u.address}),
        button('Delete', () => deleteUser(u.address),
          {class: 'danger', 'data-testid': 'user-delete', 'aria-label': 'Delete ' + u.address}),
      ]),
    ]);
  }

  async function addUser(e) {
    e.preventDefault();
    clearMessages();
    const address = $('user-add-address').value.trim();
    const body = {address, password: $('user-add-password').value};
    if ($('user-add-create-domain').checked) body.create_domain = true;
    await run(async () => {
      const resp = await api('POST', '/users', body);
      noticeFrom(resp, `Added ${address}.`);
      $('user-add-form').reset();
    });
    await reload($('view-users'), loadUsers);
  }

  async function deleteUser(address) {
    clearMessages();
    const yes = await ask({title: 'Delete user', ok: 'Delete', danger: true,
      message: `Delete ${address} and all of their mail? This cannot be undone.`});
    if (!yes) return;
    await run(async () => noticeFrom(await api('DELETE', '/users/' + enc(address)), `Deleted ${address}.`));
    await reload($('view-users'), loadUsers);
  }

  async function setPassword(address) {
    clearMessages();
    const password = await ask({title: 'Set password', message: `New password for ${address}.`,
      ok: 'Set password', input: 'New password'});
    if (password === null) return;
    await run(async () => noticeFrom(
      await api('PUT', '/users/' + enc(address) + '/password', {password}), `Password of ${address} set.`));
  }

  // ---------------------------------------------------------------- Sieve scripts of a user

  function sievePath(name) {
    return '/users/' + enc(sieveUser) + '/sieve' + (name === undefined ? '' : '/' + enc(name));
  }

  async function loadSieve(address, seq) {
    if (address !== sieveUser) $('sieve-add-form').reset(); // a draft stays with its user
    sieveUser = address;
    sieveNames = new Set();
    $('sieve-user').textContent = address;
    $('sieve-table').tBodies[0].replaceChildren();
    closeSieveEditor();
    await loadSieveList(seq);
  }

  async function loadSieveList(seq) {
    const scripts = await api('GET', sievePath());
    if (stale(seq)) return;
    sieveNames = new Set(scripts.map((s) => s.name));
    fillTable('sieve-table', scripts.map(sieveRow), 'No Sieve scripts: mail is filed as usual.');
    if (sieveEditing !== null && !sieveNames.has(sieveEditing)) closeSieveEditor();
  }

  function sieveRow(s) {
    return el('tr', {'data-testid': 'sieve-row', 'data-name': s.name, 'data-active': s.active ? 'true' : 'false'}, [
      el('td', {class: 'break'}, code(s.name)),
      el('td', {}, s.active ? badge('active', 'ok') : muted('inactive')),
      el('td', {class: 'actions'}, [
        button('Edit', () => openSieveScript(s.name), {'data-testid': 'sieve-edit', 'aria-label': 'Edit ' + s.name}),
        s.active
          ? button('Deactivate', () => activateSieve(''),
            {'data-testid': 'sieve-deactivate', 'aria-label': 'Deactivate ' + s.name})
          : button('Activate', () => activateSieve(s.name),
            {'data-testid': 'sieve-activate', 'aria-label': 'Activate ' + s.name}),
        button('Delete', () => deleteSieve(s.name), {
          class: 'danger', 'data-testid': 'sieve-delete', 'aria-label': 'Delete ' + s.name,
          disabled: s.active, title: s.active ? 'The active script cannot be deleted: deactivate it first' : null,
        }),
      ]),
    ]);
  }

  function closeSieveEditor() {
    sieveEditing = null;
    $('sieve-editor').hidden = true;
    $('sieve-editor-name').textContent = '';
    $('sieve-editor-script').value = '';
  }

  async function openSieveScript(name) {
    clearMessages();
    await run(async () => {
      const s = await api('GET', sievePath(name));
      sieveEditing = s.name;
      $('sieve-editor-name').textContent = s.name;
      $('sieve-editor-script').value = s.script;
      $('sieve-editor').hidden = false;
      $('sieve-editor').scrollIntoView({block: 'nearest'});
    });
  }

  // Store a script (the server compiles it first: a broken one comes back as a 400 with
  // its line and column, shown like any other error, and the text stays for fixing).
  async function addSieve(e) {
    e.preventDefault();
    clearMessages();
    const name = $('sieve-add-name').value.trim();
    if (sieveNames.has(name)) {
      const yes = await ask({title: 'Replace script', ok: 'Replace', danger: true,
        message: `${sieveUser} already has a script ${name}. Replace it?`});
      if (!yes) return;
    }
    const body = {script: $('sieve-add-script').value};
    if ($('sieve-add-activate').checked) body.activate = true;
    await run(async () => {
      noticeFrom(await api('PUT', sievePath(name), body), `Stored ${name}.`);
      $('sieve-add-form').reset();
      if (sieveEditing === name) closeSieveEditor();
    });
    await reload($('view-sieve'), loadSieveList);
  }

  async function saveSieve(e) {
    e.preventDefault();
    clearMessages();
    if (sieveEditing === null) return;
    const name = sieveEditing;
    await run(async () => noticeFrom(
      await api('PUT', sievePath(name), {script: $('sieve-editor-script').value}), `Saved ${name}.`));
    await reload($('view-sieve'), loadSieveList);
  }

  // `name` "" deactivates whichever script is active.
  async function activateSieve(name) {
    clearMessages();
    await run(async () => noticeFrom(await api('PUT', '/users/' + enc(sieveUser) + '/active-sieve', {name}),
      name ? `Activated ${name}.` : 'No script is active now.'));
    await reload($('view-sieve'), loadSieveList);
  }

  async function deleteSieve(name) {
    clearMessages();
    const yes = await ask({title: 'Delete script', ok: 'Delete', danger: true,
      message: `Delete the Sieve script ${name} of ${sieveUser}?`});
    if (!yes) return;
    await run(async () => noticeFrom(await api('DELETE', sievePath(name)), `Deleted ${name}.`));
    await reload($('view-sieve'), loadSieveList);
  }

  // ---------------------------------------------------------------- domains and DNS

  async function loadDomains(seq) {
    const domains = await api('GET', '/domains');
    if (stale(seq)) return;
    fillTable('domains-table', domains.map(domainRow), 'No domains.');
  }

  function domainRow(d) {
    const fromConfig = d.source === 'config';
    return el('tr', {'data-testid': 'domain-row', 'data-domain': d.domain}, [
      el('td', {class: 'address', text: d.domain}),
      el('td', {}, badge(d.source || 'unknown', fromConfig ? 'neutral' : 'info')),
      el('td', {class: 'actions'}, [
        el('a', {class: 'button', href: '#/domains/' + enc(d.domain) + '/dns', text: 'DNS records',
          'data-testid': 'domain-dns', 'aria-label': 'DNS records of ' + d.domain}),
        button('Delete', () => deleteDomain(d.domain), {
          class: 'danger', 'data-testid': 'domain-delete', 'aria-label': 'Delete ' + d.domain,
          disabled: fromConfig, title: fromConfig ? 'Listed in the config file: remove it there' : null,
        }),
      ]),
    ]);
  }

  async function addDomain(e) {
    e.preventDefault();
    clearMessages();
    const domain = $('domain-add-name').value.trim();
    await run(async () => {
      noticeFrom(await api('POST', '/domains', {domain}), `Added ${domain}.`);
      $('domain-add-form').reset();
    });
    await reload($('view-domains'), loadDomains);
  }

  async function deleteDomain(domain) {
    clearMessages();
    const yes = await ask({title: 'Delete domain', ok: 'Delete', danger: true,
      message: `Stop accepting mail for ${domain}?`});
    if (!yes) return;
    await run(async () => noticeFrom(await api('DELETE', '/domains/' + enc(domain)), `Deleted ${domain}.`));
    await reload($('view-domains'), loadDomains);
  }

  async function loadDns(domain, seq) {
    $('dns-domain').textContent = domain;
    $('dns-table').tBodies[0].replaceChildren();
    const data = await api('GET', '/domains/' + enc(domain) + '/dns');
    if (stale(seq)) return;
    const records = data && Array.isArray(data.records) ? data.records : [];
    fillTable('dns-table', records.map(dnsRow), 'No records to publish.');
  }

  function dnsRow(r) {
    const published = Array.isArray(r.published) && r.published.length
      ? el('ul', {class: 'plain'}, r.published.map((p) => el('li', {}, code(p))))
      : muted('nothing published');
    return el('tr', {'data-testid': 'dns-row', 'data-purpose': r.purpose, 'data-ok': r.ok ? 'true' : 'false'}, [
      el('td', {text: r.purpose}),
      el('td', {text: r.type}),
      el('td', {class: 'break'}, code(r.name)),
      el('td', {class: 'break'}, code(r.value)),
      el('td', {class: 'break'}, published),
      el('td', {}, r.ok ? badge('ok', 'ok') : badge('mismatch', 'bad')),
    ]);
  }

  // ---------------------------------------------------------------- aliases

  async function loadAliases(seq) {
    const aliases = await api('GET', '/aliases');
    if (stale(seq)) return;
    fillTable('aliases-table', aliases.map((a) => el('tr', {'data-testid': 'alias-row', 'data-alias': a.alias}, [
      el('td', {class: 'address', text: a.alias}),
      el('td', {class: 'break', text: list(a.targets)}),
      el('td', {class: 'actions'}, button('Delete', () => deleteAlias(a.alias),
        {class: 'danger', 'data-testid': 'alias-delete', 'aria-label': 'Delete ' + a.alias})),
    ])), 'No aliases.');
  }

  async function addAlias(e) {
    e.preventDefault();
    clearMessages();
    const alias = $('alias-add-alias').value.trim();
    const targets = $('alias-add-targets').value.split(/[\s,;]+/).filter(Boolean);
    await run(async () => {
      noticeFrom(await api('POST', '/aliases', {alias, targets}), `Added ${alias}.`);
      $('alias-add-form').reset();
    });
    await reload($('view-aliases'), loadAliases);
  }

  async function deleteAlias(alias) {
    clearMessages();
    const yes = await ask({title: 'Delete alias', ok: 'Delete', danger: true, message: `Delete the alias ${alias}?`});
    if (!yes) return;
    await run(async () => noticeFrom(await api('DELETE', '/aliases/' + enc(alias)), `Deleted ${alias}.`));
    await reload($('view-aliases'), loadAliases);
  }

  // ---------------------------------------------------------------- DKIM

  async function loadDkim(seq) {
    const [keys, domains] = await Promise.all([api('GET', '/dkim'), api('GET', '/domains')]);
    if (stale(seq)) return;
    $('dkim-domains').replaceChildren(...domains.map((d) => el('option', {value: d.domain})));
    fillTable('dkim-table', keys.map(dkimRow), 'No DKIM keys yet.');
  }

  function dkimRow(k) {
    return el('tr', {'data-testid': 'dkim-row', 'data-domain': k.domain, 'data-selector': k.selector}, [
      el('td', {text: k.domain}),
      el('td', {text: k.selector}),
      el('td', {text: k.algorithm}),
      el('td', {class: 'break'}, code(k.record_name)),
      el('td', {class: 'break'}, code(k.record_value)),
    ]);
  }

  async function generateDkim(e) {
    e.preventDefault();
    clearMessages();
    const body = {domain: $('dkim-add-domain').value.trim(), algorithm: $('dkim-add-algorithm').value};
    const selector = $('dkim-add-selector').value.trim();
    if (selector) body.selector = selector; // else the server's default
    await run(async () => {
      const k = await api('POST', '/dkim', body);
      showNotice(`Generated the ${k.algorithm} key ${k.selector} for ${k.domain}: publish its TXT record, shown below.`);
      $('dkim-add-form').reset();
    });
    await reload($('view-dkim'), loadDkim);
  }

  // ---------------------------------------------------------------- queue

  async function loadQueue(seq) {
    const entries = await api('GET', '/queue');
    if (stale(seq)) return;
    fillTable('queue-table', entries.map(queueRow), 'The queue is empty.');
  }

  function queueRow(q) {
    return el('tr', {'data-testid': 'queue-row', 'data-id': q.id}, [
      el('td', {}, code(q.id)),
      el('td', {class: 'address', text: q.sender === '' ? '<>' : q.sender}),
      el('td', {class: 'address', text: list(q.recipients)}),
      el('td', {class: 'num', text: q.attempts}),
      timeCell(q.created),
      timeCell(q.next_attempt),
      el('td', {class: 'break'}, q.last_error ? document.createTextNode(q.last_error) : muted('none')),
      el('td', {class: 'actions stack'}, [
        button('Details', () => showQueueEntry(q.id), {'data-testid': 'queue-details', 'aria-label': 'Details of ' + q.id}),
        button('Retry', () => retryQueueEntry(q.id), {'data-testid': 'queue-retry', 'aria-label': 'Retry ' + q.id}),
        button('Delete', () => deleteQueueEntry(q.id),
          {class: 'danger', 'data-testid': 'queue-delete', 'aria-label': 'Delete ' + q.id}),
      ]),
    ]);
  }

  async function showQueueEntry(id) {
    clearMessages();
    await run(async () => {
      const q = await api('GET', '/queue/' + enc(id));
      $('queue-detail-id').textContent = q.id;
      $('queue-detail-fields').replaceWith(Object.assign(fieldList(q, [
        ['id', 'ID'], ['sender', 'Sender'], ['recipients', 'Recipients'], ['size', 'Size (bytes)'],
        ['attempts', 'Attempts'], ['created', 'Created'], ['next_attempt', 'Next attempt'],
        ['last_error', 'Last error'],
      ].filter(([k]) => k in q)), {id: 'queue-detail-fields'}));
      // Shown in their own blocks below.
      for (const key of ['decisions', 'headers']) {
        const dd = $('queue-detail-fields').querySelector(`dd[data-field="${key}"]`);
        if (dd) { dd.previousElementSibling.remove(); dd.remove(); }
      }
      $('queue-detail-decisions').replaceChildren(renderValue(q.decisions));
      $('queue-detail-headers').textContent = q.headers || '';
      $('queue-detail').hidden = false;
      $('queue-detail').scrollIntoView({block: 'nearest'});
    });
  }

  async function retryQueueEntry(id) {
    clearMessages();
    await run(async () => noticeFrom(await api('POST', '/queue/' + enc(id) + '/retry'), `Retrying ${id}.`));
    await reload($('view-queue'), loadQueue);
  }

  async function retryAll() {
    clearMessages();
    await run(async () => noticeFrom(await api('POST', '/queue/retry'), 'Retrying every entry.'));
    await reload($('view-queue'), loadQueue);
  }

  async function deleteQueueEntry(id) {
    clearMessages();
    const yes = await ask({title: 'Delete queue entry', ok: 'Delete', danger: true,
      message: `Delete ${id} without delivering it (and without a bounce)?`});
    if (!yes) return;
    await run(async () => noticeFrom(await api('DELETE', '/queue/' + enc(id)), `Deleted ${id}.`));
    if ($('queue-detail-id').textContent === id) $('queue-detail').hidden = true;
    await reload($('view-queue'), loadQueue);
  }

  // ---------------------------------------------------------------- traces

  async function enterTraces(seq) {
    if (!tracesSearched) await searchTraces(seq); // the newest traces on first visit
  }

  // datetime-local value (local time) -> Unix seconds, as the API accepts.
  function unixSeconds(localValue) {
    const d = new Date(localValue);
    return isNaN(d.getTime()) ? localValue : String(Math.floor(d.getTime() / 1000));
  }

  async function searchTraces(seq) {
    const params = new URLSearchParams();
    const fields = [['sender', 'trace-search-sender'], ['recipient', 'trace-search-recipient'],
      ['message_id', 'trace-search-message-id'], ['limit', 'trace-search-limit']];
    for (const [name, id] of fields) {
      const v = $(id).value.trim();
      if (v) params.set(name, v);
    }
    for (const name of ['since', 'until']) {
      const v = $('trace-search-' + name).value;
      if (v) params.set(name, unixSeconds(v));
    }
    const query = params.toString();
    const traces = await api('GET', '/traces' + (query ? '?' + query : ''));
    if (stale(seq)) return;
    tracesSearched = true;
    $('traces-count').textContent = traces.length === 1 ? '1 trace' : `${traces.length} traces`;
    fillTable('traces-table', traces.map(traceRow), 'No trace matches.');
  }

  function traceRow(t) {
    const href = '#/trace/' + enc(t.id);
    const open = () => { location.hash = href; };
    return el('tr', {
      'data-testid': 'trace-row', 'data-id': t.id, tabindex: 0,
      on: {click: open, keydown: (e) => { if (e.key === 'Enter') open(); }},
    }, [
      timeCell(t.created),
      el('td', {}, el('a', {href, 'data-testid': 'trace-link'}, code(t.id))),
      el('td', {class: 'break', text: t.message_id || ''}),
      el('td', {class: 'address', text: t.sender === '' ? '<>' : t.sender}),
      el('td', {class: 'address', text: list(t.recipients)}),
      el('td', {}, resultBadge(t.result)),
    ]);
  }

  async function onTraceSearch(e) {
    e.preventDefault();
    clearMessages();
    await reload($('view-traces'), () => searchTraces(routeSeq));
  }

  function onTraceOpen(e) {
    e.preventDefault();
    const id = $('trace-open-id').value.trim();
    if (!id) return;
    const hash = '#/trace/' + enc(id);
    if (location.hash === hash) route(); // same trace again: no hashchange
    else location.hash = hash;
  }

  const TRACE_KNOWN = new Set(['id', 'created', 'message_id', 'sender', 'recipients', 'size', 'result',
    'reply', 'connection', 'sender_auth', 'spam', 'steps', 'filed', 'attempts']);

  async function loadTrace(id, seq) {
    $('trace-id').textContent = id;
    $('trace-body').hidden = true; // until this trace has loaded
    for (const t of ['trace-steps', 'trace-filed', 'trace-attempts']) $(t).tBodies[0].replaceChildren();
    for (const d of ['trace-summary', 'trace-connection', 'trace-sender-auth', 'trace-spam']) $(d).replaceChildren();
    const t = await api('GET', '/trace/' + enc(id));
    if (stale(seq)) return;
    renderTrace(t);
  }

  function renderTrace(t) {
    $('trace-id').textContent = t.id;
    const summary = fieldList({
      id: t.id, created: fmtTime(t.created), message_id: t.message_id, sender: t.sender,
      recipients: t.recipients, size: t.size, reply: t.reply,
    }, [['id', 'Queue ID'], ['created', 'Received'], ['message_id', 'Message-ID'], ['sender', 'Sender'],
      ['recipients', 'Recipients'], ['size', 'Size (bytes)'], ['reply', 'SMTP reply']]);
    summary.prepend(el('dt', {text: 'Result'}), el('dd', {'data-field': 'result'}, resultBadge(t.result)));
    $('trace-summary').replaceChildren(...summary.childNodes);

    $('trace-connection').replaceChildren(objectOr(t.connection, [
      ['listener', 'Listener'], ['ip', 'IP address'], ['ptr', 'PTR name'], ['fcrdns', 'FCrDNS'],
      ['helo', 'HELO'], ['tls', 'TLS'], ['user', 'Authenticated user']], 'No connection data.'));
    $('trace-sender-auth').replaceChildren(objectOr(t.sender_auth, [
      ['spf', 'SPF'], ['dkim', 'DKIM'], ['dmarc', 'DMARC'], ['arc', 'ARC']], 'Not checked (e.g. submission).'));
    $('trace-spam').replaceChildren(objectOr(t.spam, [
      ['engine', 'Engine'], ['score', 'Score'], ['required', 'Required'], ['action', 'Action']], 'Not scanned.'));

    fillTable('trace-steps', (t.steps || []).map((s) => el('tr', {'data-testid': 'trace-step'}, [
      timeCell(s.at),
      el('td', {text: s.stage}),
      el('td', {class: 'break', text: s.engine}),
      el('td', {}, badge(s.verdict || '', verdictKind(s.verdict))),
      el('td', {class: 'break', text: s.reason || ''}),
      el('td', {class: 'num nowrap', text: s.micros === undefined || s.micros === null ? '' : `${s.micros} µs`}),
    ])), 'No steps recorded.');
    fillTable('trace-filed', (t.filed || []).map((f) => el('tr', {'data-testid': 'trace-filed-row'}, [
      el('td', {class: 'address', text: f.recipient}),
      el('td', {class: 'address', text: f.user}),
      el('td', {text: f.mailbox}),
    ])), 'Nothing filed locally.');
    fillTable('trace-attempts', (t.attempts || []).map((a) => el('tr', {'data-testid': 'trace-attempt'}, [
      timeCell(a.at),
      el('td', {class: 'address', text: list(a.recipients)}),
      el('td', {}, a.mx ? code(a.mx) : muted('none')),
      el('td', {}, a.tls ? document.createTextNode(a.tls) : muted('none')),
      el('td', {class: 'break', text: a.reply || ''}),
      el('td', {}, resultBadge(a.result)),
    ])), 'No remote delivery attempts.');

    // Fields this console does not know yet still get shown.
    const other = {};
    for (const key of Object.keys(t)) if (!TRACE_KNOWN.has(key)) other[key] = t[key];
    const hasOther = Object.keys(other).length > 0;
    $('trace-other').replaceChildren(hasOther ? fieldList(other) : '');
    $('trace-other-card').hidden = !hasOther;
    $('trace-body').hidden = false;
  }

  function objectOr(obj, order, emptyText) {
    return obj && typeof obj === 'object' ? fieldList(obj, order) : muted(emptyText);
  }

  function verdictKind(v) {
    if (!v) return 'neutral';
    if (/^(accept|ok|pass|continue|deliver)/i.test(v)) return 'ok';
    if (/^(reject|deny|fail|bounce)/i.test(v)) return 'bad';
    if (/^(temp|defer|quarantine)/i.test(v)) return 'warn';
    return 'neutral';
  }

  // ---------------------------------------------------------------- dashboard

  // Which samples each chart draws; `delta` series are counters (totals since
  // start) shown as the increase per interval.
  const CHARTS = [
    {id: 'smtp', title: 'SMTP transactions per interval', series: [
      {key: 'smtp_accepted', label: 'accepted', delta: true},
      {key: 'smtp_rejected', label: 'rejected', delta: true},
      {key: 'smtp_tempfailed', label: 'temp. failed', delta: true},
      {key: 'rcpt_refused', label: 'recipients refused', delta: true}]},
    {id: 'deliveries', title: 'Deliveries per interval', series: [
      {key: 'deliveries_local', label: 'local', delta: true},
      {key: 'deliveries_remote', label: 'remote', delta: true}]},
    {id: 'connections', title: 'Open connections', series: [
      {key: 'connections_open', label: 'open'}]},
    {id: 'queue', title: 'Queue entries', series: [
      {key: 'queue_entries', label: 'entries'}]},
    {id: 'auth', title: 'Authentication failures per interval', series: [
      {key: 'auth_failures', label: 'failures', delta: true}]},
  ];

  async function enterDashboard(seq) {
    await loadDashboard(seq);
  }

  async function loadDashboard(seq) {
    const stats = await api('GET', '/stats');
    if (stale(seq)) return;
    const interval = Number(stats.interval) || 30;
    const samples = (stats.samples || []).slice().sort((a, b) => a.t - b.t);
    $('dashboard-summary').textContent = samples.length
      ? `Last hour, one sample every ${interval} s; latest ${fmtTime(samples[samples.length - 1].t)}.`
      : `No samples yet: the server takes one every ${interval} s.`;
    $('charts').replaceChildren(...CHARTS.map((c) => chartCard(c, samples, interval)));
    // Keep it current while it is on screen.
    stopDashboardTimer();
    dashboardTimer = setInterval(() => {
      if (!$('view-dashboard').hidden && token) run(() => loadDashboard(seq));
    }, interval * 1000);
  }

  function stopDashboardTimer() {
    if (dashboardTimer !== null) clearInterval(dashboardTimer);
    dashboardTimer = null;
  }

  // [{t, v}] points of one series.
  function seriesPoints(samples, s) {
    const pts = [];
    for (let i = 0; i < samples.length; i++) {
      const v = Number(samples[i][s.key]) || 0;
      if (!s.delta) {
        pts.push({t: samples[i].t, v});
      } else if (i > 0) {
        const prev = Number(samples[i - 1][s.key]) || 0;
        pts.push({t: samples[i].t, v: v >= prev ? v - prev : v}); // a drop means a restart
      }
    }
    return pts;
  }

  function chartCard(chart, samples, interval) {
    const series = chart.series.map((s, i) => ({...s, index: i, points: seriesPoints(samples, s)}));
    const legend = el('ul', {class: 'legend'}, series.map((s) => {
      const last = s.points.length ? s.points[s.points.length - 1].v : null;
      const total = s.points.reduce((sum, p) => sum + p.v, 0);
      const figure = s.delta ? `${total} in the hour` : (last === null ? 'no data' : `now ${last}`);
      return el('li', {}, [el('span', {class: 'swatch series-' + s.index, 'aria-hidden': 'true'}),
        `${s.label}: ${figure}`]);
    }));
    return el('figure', {class: 'card chart', id: 'chart-' + chart.id, 'data-testid': 'chart'}, [
      el('figcaption', {text: chart.title}),
      lineChart(chart.title, series, samples, interval),
      legend,
    ]);
  }

  // An SVG line chart over the last hour: y from 0 to a round maximum.
  function lineChart(title, series, samples, interval) {
    const W = 480, H = 180, L = 40, R = 10, T = 10, B = 24;
    const xMax = samples.length ? samples[samples.length - 1].t : Math.floor(Date.now() / 1000);
    const xMin = xMax - 3600;
    const yMaxRaw = Math.max(0, ...series.flatMap((s) => s.points.map((p) => p.v)));
    const yMax = niceMax(yMaxRaw);
    const x = (t) => L + (W - L - R) * (t - xMin) / (xMax - xMin);
    const y = (v) => H - B - (H - T - B) * v / yMax;

    const root = svg('svg', {viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img',
      'aria-label': title}, svg('title', {text: title}));
    // Grid and y labels.
    for (let i = 0; i <= 4; i++) {
      const v = yMax * i / 4;
      root.append(svg('line', {x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid'}),
        svg('text', {x: L - 6, y: y(v) + 4, class: 'axis-label', 'text-anchor': 'end',
          text: Number.isInteger(v) ? v : v.toFixed(1)}));
    }
    // x labels every 15 minutes, as clock times.
    for (let m = 0; m <= 60; m += 15) {
      const t = xMin + m * 60;
      root.append(svg('text', {x: x(t), y: H - 6, class: 'axis-label',
        'text-anchor': m === 0 ? 'start' : (m === 60 ? 'end' : 'middle'), text: clock(t)}));
    }
    root.append(svg('line', {x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis'}));

    const inWindow = (p) => p.t >= xMin;
    let drawn = 0;
    for (const s of series) {
      const pts = s.points.filter(inWindow);
      if (!pts.length) continue;
      drawn += pts.length;
      root.append(svg('polyline', {class: 'line series-' + s.index, 'data-series': s.key,
        points: pts.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ')}));
      if (pts.length < 3) { // too few to see as a line
        for (const p of pts) root.append(svg('circle', {cx: x(p.t), cy: y(p.v), r: 3, class: 'dot series-' + s.index}));
      }
    }
    if (!drawn) {
      root.append(svg('text', {x: W / 2, y: H / 2, class: 'no-data', 'text-anchor': 'middle',
        text: samples.length ? 'Not enough samples yet' : 'No data yet'}));
    }
    return root;
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const mag = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [1, 2, 2.5, 5, 10]) if (f * mag >= v) return f * mag;
    return 10 * mag;
  }

  function clock(t) {
    const d = new Date(t * 1000);
    return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
  }

  // ---------------------------------------------------------------- start

  function wire() {
    $('signin-form').addEventListener('submit', onSignIn);
    $('signout').addEventListener('click', () => signOut('Signed out.', false));
    $('error-close').addEventListener('click', clearMessages);
    $('user-add-form').addEventListener('submit', addUser);
    $('sieve-add-form').addEventListener('submit', addSieve);
    $('sieve-editor').addEventListener('submit', saveSieve);
    $('sieve-editor-close').addEventListener('click', closeSieveEditor);
    $('domain-add-form').addEventListener('submit', addDomain);
    $('dns-refresh').addEventListener('click', () => route());
    $('alias-add-form').addEventListener('submit', addAlias);
    $('dkim-add-form').addEventListener('submit', generateDkim);
    $('queue-refresh').addEventListener('click', () => { clearMessages(); reload($('view-queue'), loadQueue); });
    $('queue-retry-all').addEventListener('click', retryAll);
    $('queue-detail-close').addEventListener('click', () => { $('queue-detail').hidden = true; });
    $('trace-search-form').addEventListener('submit', onTraceSearch);
    $('trace-open-form').addEventListener('submit', onTraceOpen);
    $('dashboard-refresh').addEventListener('click', () => { clearMessages(); reload($('view-dashboard'), loadDashboard); });
    window.addEventListener('hashchange', route);
    wireDialog();
  }

  function start() {
    watchCsp();
    wire();
    token = readStoredToken();
    if (token) showApp();
    else showSignIn();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

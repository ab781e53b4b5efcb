// The admin page's behaviour (update-server, admin/admin.php): live device filter, the row
// actions (delete, touch, refresh, log), periodic refresh of the rows in view. Loaded as a
// file so that the Content-Security-Policy needs no 'unsafe-inline'. Row HTML always comes
// from the server, already escaped; this file never builds markup from device data.
(function () {
  'use strict';

  var csrf = document.body.getAttribute('data-csrf') || '';
  var table = document.getElementById('devices');

  function banner(text) {
    var b = document.getElementById('banner');
    if (!b) { return; }
    b.textContent = text;
    b.hidden = !text;
  }

  // --- filter: the same rules as src/admin/filter.rs -------------------------------------
  function escapeRegExp(c) { return c.replace(/[.*+?^${}()|[\]\\\/-]/g, '\\$&'); }

  function dashedSerial(word) {
    if (/^009033[0-9a-f]{6}$/i.test(word)) { return word.match(/../g).join('-'); }
    return word;
  }

  function wordPattern(word) {
    var src = '';
    var chars = Array.from(dashedSerial(word)).slice(0, 100);
    for (var i = 0; i < chars.length; i++) {
      var c = chars[i];
      if (c === '*') { src += '\\S*'; } else if (c === '?') { src += '\\S'; } else { src += escapeRegExp(c); }
    }
    return new RegExp('\\b' + src + '\\b', 'i');
  }

  function compile(text) {
    return text.split(/\s+/).filter(function (w) { return w.length > 0; }).slice(0, 20).map(wordPattern);
  }

  var filterInput = document.getElementById('filter');
  var patterns = filterInput ? compile(filterInput.value) : [];

  // With a long list the page holds only some of the devices (a page of them, or those of a
  // filter the server applied): then the filter goes to the server, which sees them all.
  var countElement = document.getElementById('count');
  var serverSide = !!table && !!countElement &&
    (parseInt(countElement.getAttribute('data-total'), 10) || 0) > table.querySelectorAll('tr.device').length;

  function matches(row) {
    if (serverSide) { return true; }
    var facts = row.getAttribute('data-facts') || '';
    for (var i = 0; i < patterns.length; i++) {
      if (!patterns[i].test(facts)) { return false; }
    }
    return true;
  }

  function updateCount(removed) {
    var count = document.getElementById('count');
    if (!count || !table) { return; }
    var total = parseInt(count.getAttribute('data-total'), 10) || 0;
    if (removed) {
      total = Math.max(0, total - removed);
      count.setAttribute('data-total', total);
    }
    var shown = 0;
    if (serverSide) {
      shown = Math.max(0, (parseInt(count.getAttribute('data-shown'), 10) || 0) - (removed || 0));
      count.setAttribute('data-shown', shown);
    } else {
      var rows = table.querySelectorAll('tr.device');
      for (var i = 0; i < rows.length; i++) { if (!rows[i].hidden) { shown++; } }
    }
    count.textContent = shown + ' of ' + total + ' devices';
  }

  var pageRequest = 0;
  function serverFilter(text) {
    var url = 'admin.php?mode=status&filter=' + encodeURIComponent(text);
    var mine = ++pageRequest;
    fetch(url, { credentials: 'same-origin' })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        if (mine !== pageRequest) { return; }
        // DOMParser builds an inert document: nothing in it runs
        var doc = new DOMParser().parseFromString(html, 'text/html');
        var rows = doc.getElementById('devices');
        var count = doc.getElementById('count');
        if (!rows || !count) { banner('Your session has ended: reload the page to log in again.'); return; }
        table.replaceChildren.apply(table, Array.from(rows.childNodes).map(function (n) { return document.importNode(n, true); }));
        var oldPager = document.getElementById('pager');
        if (oldPager) { oldPager.remove(); }
        var newCount = document.importNode(count, true);
        document.getElementById('count').replaceWith(newCount);
        var pager = doc.getElementById('pager');
        if (pager) { newCount.after(document.importNode(pager, true)); }
        history.replaceState(null, '', url);
      })
      .catch(function (e) { banner('Failed: ' + e.message); });
  }

  function applyFilter() {
    if (!table || serverSide) { return; }
    var rows = table.querySelectorAll('tr.device');
    for (var i = 0; i < rows.length; i++) { rows[i].hidden = !matches(rows[i]); }
    updateCount();
  }

  if (filterInput) {
    var timer = null;
    var refilter = function () {
      clearTimeout(timer);
      if (serverSide) {
        var text = filterInput.value;
        if (text === filterInput.getAttribute('data-applied')) { return; }
        timer = setTimeout(function () { filterInput.setAttribute('data-applied', text); serverFilter(text); }, 350);
        return;
      }
      timer = setTimeout(function () { patterns = compile(filterInput.value); applyFilter(); }, 120);
    };
    filterInput.setAttribute('data-applied', filterInput.value);
    ['input', 'change', 'search', 'keyup'].forEach(function (name) { filterInput.addEventListener(name, refilter); });
  }

  // --- talking to the server -------------------------------------------------------------
  function request(method, params) {
    var query = Object.keys(params).map(function (k) {
      return encodeURIComponent(k) + '=' + encodeURIComponent(params[k]);
    }).join('&');
    var headers = { 'Accept': 'application/json' };
    if (method === 'POST') { headers['X-CSRF-Token'] = csrf; }
    return fetch('admin.php?mode=ui&' + query, { method: method, headers: headers, credentials: 'same-origin' })
      .then(function (response) {
        if (response.status === 401) {
          banner('Your session has ended: reload the page to log in again.');
          throw new Error('login required');
        }
        return response.json().then(function (body) {
          if (!response.ok && response.status !== 404) { throw new Error(typeof body === 'string' ? body : 'HTTP ' + response.status); }
          return { status: response.status, body: body };
        });
      });
  }

  function replaceRow(row, html) {
    var template = document.createElement('template');
    template.innerHTML = html.trim();
    var fresh = template.content.firstElementChild;
    if (!fresh || fresh.tagName !== 'TR') { return; }
    fresh.hidden = !matches(fresh);
    row.replaceWith(fresh);
  }

  function refreshRow(row, detail) {
    var sn = row.getAttribute('data-sn');
    if (detail === undefined) { detail = row.hasAttribute('data-detail'); }
    var params = { cmd: 'updatestatus', sn: sn };
    if (detail) { params.detail = '1'; }
    return request('GET', params).then(function (answer) {
      if (answer.status === 404) { row.remove(); updateCount(1); return; }
      if (typeof answer.body === 'string') { replaceRow(row, answer.body); }
    });
  }

  function act(button) {
    var row = button.closest('tr.device');
    if (!row) { return; }
    var sn = row.getAttribute('data-sn');
    var what = button.getAttribute('data-act');
    var done;
    if (what === 'delete') {
      if (!window.confirm('Delete the state of ' + sn + '? The device shows up again when it polls next.')) { return; }
      done = request('POST', { cmd: 'delstatus', sn: sn }).then(function (answer) {
        if (answer.body === true) { row.remove(); updateCount(1); }
      });
    } else if (what === 'touch') {
      done = request('POST', { cmd: 'touchstatus', sn: sn }).then(function () { return refreshRow(row); });
    } else if (what === 'refresh') {
      done = refreshRow(row);
    } else if (what === 'log') {
      done = refreshRow(row, !row.hasAttribute('data-detail'));
    } else if (what === 'delfile') {
      var file = button.getAttribute('data-file');
      if (!window.confirm('Delete ' + file + '?')) { return; }
      done = request('POST', { cmd: 'delfile', sn: sn, file: file }).then(function () { return refreshRow(row); });
    }
    if (done) {
      button.disabled = true;
      done.catch(function (e) { banner('Failed: ' + e.message); }).then(function () { button.disabled = false; });
    }
  }

  if (table) {
    table.addEventListener('click', function (event) {
      var button = event.target.closest('button[data-act]');
      if (button && table.contains(button)) { event.preventDefault(); act(button); }
    });
  }

  // --- periodic refresh (status/@refresh) of the rows in view -----------------------------
  var every = parseInt(document.body.getAttribute('data-refresh'), 10) || 0;
  if (table && every > 0) {
    setInterval(function () {
      if (document.hidden) { return; }
      var rows = table.querySelectorAll('tr.device');
      var height = window.innerHeight || document.documentElement.clientHeight;
      var budget = 100;
      for (var i = 0; i < rows.length && budget > 0; i++) {
        if (rows[i].hidden) { continue; }
        var box = rows[i].getBoundingClientRect();
        if (box.bottom < 0 || box.top > height) { continue; }
        budget--;
        refreshRow(rows[i]).catch(function () {});
      }
    }, every * 1000);
  }

  applyFilter();
}());

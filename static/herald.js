// Herald demo page: subscribe to one channel over SSE (with the JSON
// envelope), publish to it, and resume across page loads via sessionStorage.
(function () {
  'use strict';

  var CHANNEL_RE = /^[A-Za-z0-9_\-.:\/]{1,128}$/;
  var MAX_ITEMS = 500; // keep the list (and the page's memory) bounded
  var RESET = 'herald.reset';

  var $ = function (id) { return document.getElementById(id); };
  var statusEl = $('status');
  var errorEl = $('error');
  var eventsEl = $('events');
  var channelEl = $('channel');
  var messageEl = $('message');

  var source = null;
  var channel = null;
  var seen = new Set(); // ids already shown, so a replay never shows twice
  var retryTimer = null;
  var retryDelay = 1000;

  function store(key, value) {
    try {
      if (value == null) sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, value);
    } catch (e) { /* storage may be disabled */ }
  }
  function load(key) {
    try { return sessionStorage.getItem(key); } catch (e) { return null; }
  }
  function idKey(name) { return 'herald.lastEventId:' + name; }

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  function showError(text) {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  }

  function errorText(body, fallback) {
    if (body && body.error && body.error.message) {
      return body.error.code ? body.error.code + ': ' + body.error.message : body.error.message;
    }
    return fallback;
  }

  function append(li) {
    var atBottom = eventsEl.scrollTop + eventsEl.clientHeight >= eventsEl.scrollHeight - 4;
    eventsEl.appendChild(li);
    while (eventsEl.children.length > MAX_ITEMS) eventsEl.removeChild(eventsEl.firstElementChild);
    if (atBottom) eventsEl.scrollTop = eventsEl.scrollHeight;
  }

  function span(cls, text) {
    var s = document.createElement('span');
    s.className = cls;
    s.textContent = text;
    return s;
  }

  function remember(id) {
    if (!id) return;
    seen.add(id);
    if (seen.size > MAX_ITEMS * 2) seen.delete(seen.values().next().value);
    store(idKey(channel), id);
  }

  // Parse an SSE message; with envelope=1 its data is {channel,id,event,data}.
  function unwrap(ev) {
    var env = null;
    try { env = JSON.parse(ev.data); } catch (e) { /* not JSON */ }
    if (env && typeof env === 'object' && 'data' in env && ('channel' in env || 'id' in env)) {
      return {
        id: env.id || ev.lastEventId || '',
        channel: env.channel || channel,
        event: env.event || ev.type,
        data: env.data
      };
    }
    return { id: ev.lastEventId || '', channel: channel, event: ev.type, data: env === null ? ev.data : env };
  }

  function onEvent(ev) {
    var e = unwrap(ev);
    if (e.id && seen.has(e.id)) return;
    remember(e.id);
    var li = document.createElement('li');
    li.dataset.id = e.id;
    li.dataset.channel = e.channel;
    var meta = document.createElement('span');
    meta.className = 'meta';
    meta.appendChild(span('channel', e.channel));
    if (e.event && e.event !== 'message') meta.appendChild(span('type', e.event));
    meta.appendChild(span('id', e.id));
    li.appendChild(meta);
    li.appendChild(span('data', typeof e.data === 'string' ? e.data : JSON.stringify(e.data)));
    append(li);
  }

  function onReset(ev) {
    var body = null;
    try { body = JSON.parse(ev.data); } catch (e) { /* shown raw below */ }
    // The envelope may wrap the reset body as well.
    if (body && body.event === RESET && body.data !== undefined) {
      try { body = typeof body.data === 'string' ? JSON.parse(body.data) : body.data; } catch (e) { body = null; }
    }
    if (ev.lastEventId) remember(ev.lastEventId);
    var text;
    if (body && typeof body === 'object') {
      text = 'Reset: ' + (body.reason || 'history incomplete');
      if (body.lost) text += ' (lost after ' + (body.lost.after || 'start') + ' through ' + (body.lost.through || '?') + ')';
      if (body.channels && body.channels.length) text += ' on ' + body.channels.join(', ');
    } else {
      text = 'Reset: ' + ev.data;
    }
    var li = document.createElement('li');
    li.className = 'reset';
    li.dataset.id = ev.lastEventId || '';
    li.dataset.event = RESET;
    li.appendChild(span('meta', RESET));
    li.appendChild(span('data', text));
    append(li);
  }

  function connect(name, resume) {
    clearTimeout(retryTimer);
    if (source) source.close();
    channel = name;
    store('herald.channel', name);
    var url = '/events?channel=' + encodeURIComponent(name) + '&envelope=1';
    var last = resume ? load(idKey(name)) : null;
    if (last) url += '&lastEventId=' + encodeURIComponent(last);
    setStatus('connecting', 'Connecting to ' + name + '…');
    var es = new EventSource(url);
    source = es;
    es.onopen = function () {
      retryDelay = 1000;
      setStatus('connected', 'Connected to ' + name);
    };
    es.onmessage = onEvent;
    es.addEventListener(RESET, onReset);
    es.onerror = function () {
      if (source !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The server refused the stream (e.g. 4xx/5xx): retry ourselves, with backoff.
        setStatus('disconnected', 'Disconnected; retrying in ' + Math.round(retryDelay / 1000) + ' s');
        retryTimer = setTimeout(function () { connect(name, true); }, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      } else {
        setStatus('reconnecting', 'Reconnecting to ' + name + '…');
      }
    };
  }

  function publishUrl(name) {
    return '/channels/' + name.split('/').map(encodeURIComponent).join('/') + '/events';
  }

  $('connect-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var name = channelEl.value.trim();
    if (!CHANNEL_RE.test(name)) {
      showError('Invalid channel name: use letters, digits and _ - . : / (1 to 128 characters).');
      channelEl.focus();
      return;
    }
    showError('');
    if (name !== channel) {
      eventsEl.textContent = '';
      seen.clear();
    }
    connect(name, true);
  });

  $('send-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var text = messageEl.value;
    if (!text || !channel) return;
    var button = $('send');
    button.disabled = true;
    fetch(publishUrl(channel), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ data: text })
    }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (body) {
        if (!res.ok) throw new Error(errorText(body, 'Publish failed: HTTP ' + res.status));
        showError('');
        messageEl.value = '';
      });
    }).catch(function (err) {
      showError(err && err.message ? err.message : 'Publish failed');
    }).then(function () {
      button.disabled = false;
      messageEl.focus();
    });
  });

  var fromUrl = new URLSearchParams(location.search).get('channel');
  var initial = fromUrl || load('herald.channel') || channelEl.value || 'demo';
  if (!CHANNEL_RE.test(initial)) initial = 'demo';
  channelEl.value = initial;
  connect(initial, true);
})();

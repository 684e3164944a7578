// The test page's script (tests/browser.rs, tests/browser/page.html). Loaded before the official
// client's browser build, so it can watch the page's WebSocket and XMLHttpRequest traffic (watch,
// not alter), then starts the client once the build has loaded.
//
// The page's query string: mode (v3-ws | v3-lp | v4-ws | v4-lp), priv (the private item as PHP
// signs it: <priv>:<pub>.<sig>), shared (<shared>.<sig>), public (<pub>.<sig(public:<pub>)>).
// The server's URLs are this page's own origin: nginx serves the page and the push locations.
//
// Every event goes to window.report (bound by tests/browser/drive.mjs) and into the table that
// the screenshots show.
'use strict';

(function () {
  const q = new URLSearchParams(location.search);
  const MODE = q.get('mode') || 'v3-ws';
  const MODES = {
    'v3-ws': { version: 3, websocket: true },
    'v3-lp': { version: 3, websocket: false },
    'v4-ws': { version: 4, websocket: true },
    'v4-lp': { version: 4, websocket: false },
  };
  const mode = MODES[MODE];

  let rows = 0;
  function show(obj) {
    const table = document.getElementById('events');
    if (!table) return;
    const tr = document.createElement('tr');
    const ev = document.createElement('td');
    ev.textContent = obj.ev;
    const rest = document.createElement('td');
    const { ev: _ev, ...details } = obj;
    rest.textContent = JSON.stringify(details);
    tr.append(ev, rest);
    if (obj.ev === 'msg') tr.className = 'msg';
    if (obj.ev === 'ws-close' || (obj.ev === 'lp-response' && obj.status !== 200 && obj.status !== 304)) tr.className = 'close';
    if (obj.ev === 'failure' || obj.ev === 'log') tr.className = 'bad';
    table.append(tr);
    rows += 1;
    // Keep the newest rows on screen.
    while (table.rows.length > 28) table.deleteRow(1);
    document.getElementById('count').textContent = String(rows);
  }

  function emit(obj) {
    const ready = () => {
      show(obj);
      if (typeof window.report === 'function') window.report(obj);
    };
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', ready);
    else ready();
  }
  function fail(what) {
    emit({ ev: 'failure', what: String(what) });
  }
  window.addEventListener('error', (e) => fail(`page error: ${e.message}`));
  window.addEventListener('unhandledrejection', (e) => fail(`unhandled rejection: ${e.reason?.stack || e.reason}`));

  // -------------------------------------------------------------------------------------------
  // What the transports saw. `current` is the connection whose message is being dispatched
  // (for long polling: the poll in flight).

  let connections = 0;
  let current = null;
  const NativeWebSocket = window.WebSocket;
  class ObservedWebSocket extends NativeWebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      const n = ++connections;
      emit({ ev: 'ws-connect', n, url: String(url) });
      // Registered before the client's own listeners, so these run first.
      this.addEventListener('open', () => emit({ ev: 'ws-open', n }));
      this.addEventListener('message', (e) => {
        current = n;
        if (typeof e.data !== 'string' && !(e.data instanceof ArrayBuffer) && !(e.data instanceof Blob)) {
          fail(`ws ${n}: message of unexpected type`);
        }
      });
      this.addEventListener('close', (e) => emit({ ev: 'ws-close', n, code: e.code, reason: e.reason }));
    }
  }
  window.WebSocket = ObservedWebSocket;

  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  // Reports the answer of the poll in flight on `xhr`, once.
  function pollDone(xhr) {
    if (xhr.__poll == null || xhr.readyState !== 4) return;
    const n = xhr.__poll;
    xhr.__poll = null;
    emit({ ev: 'lp-response', n, status: xhr.status, lastMessageId: xhr.getResponseHeader('Last-Message-Id') });
  }
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    // The client reuses its request object and may open the next poll from its own handler,
    // before a listener added here would run: report the finished one first.
    pollDone(this);
    this.__observed = { method: String(method), url: new URL(String(url), location.href).href };
    return open.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (body) {
    const o = this.__observed;
    if (o && o.method === 'GET' && o.url.includes('/bitrix/sub')) {
      const n = ++connections;
      // One poll is in flight at a time: what arrives now belongs to it.
      this.__poll = n;
      current = n;
      emit({ ev: 'lp-request', n, url: o.url });
      // One listener per request object, for the poll in flight on it.
      if (!this.__watched) {
        this.__watched = true;
        this.addEventListener('readystatechange', () => pollDone(this));
      }
    }
    return send.call(this, body);
  };

  // -------------------------------------------------------------------------------------------
  // The client, with the config PHP's `pull.config.get` returns

  function start() {
    document.getElementById('title').textContent = `push-server: official client in a real browser, ${MODE}`;
    if (!mode) return fail(`unknown mode ${MODE}`);
    if (!window.B24Js || !window.B24Js.B24PullClientManager) return fail('the client build did not load (no B24Js.B24PullClientManager)');
    const now = Date.now();
    const iso = (ms) => new Date(ms).toISOString();
    const origin = location.origin;
    const wsOrigin = origin.replace(/^http/, 'ws');
    const [pubId = '', pubSig = ''] = (q.get('public') || '').split('.');
    const configTimestamp = Math.floor(now / 1000);
    const config = () => ({
      api: { revision_web: 19, revision_mobile: 3 },
      server: {
        version: mode.version,
        mode: 'personal',
        config_timestamp: configTimestamp,
        timeShift: 0,
        websocket_enabled: mode.websocket,
        websocket: `${wsOrigin}/bitrix/subws/`,
        websocket_secure: `${wsOrigin}/bitrix/subws/`,
        long_polling: `${origin}/bitrix/sub/`,
        long_pooling_secure: `${origin}/bitrix/sub/`,
        publish_enabled: mode.version > 3,
        publish: `${origin}/bitrix/rest/`,
        publish_secure: `${origin}/bitrix/rest/`,
      },
      channels: {
        private: { id: q.get('priv'), public_id: q.get('public') || undefined, start: iso(now - 60000), end: iso(now + 12 * 3600000), type: 'private' },
        shared: { id: q.get('shared'), start: iso(now - 60000), end: iso(now + 12 * 3600000), type: 'shared' },
      },
      publicChannels: pubId ? { 1: { user_id: 1, public_id: pubId, signature: pubSig, start: iso(now - 60000), end: iso(now + 12 * 3600000) } } : {},
    });
    // Any REST call means a config reload (a 4010 close or an expired config): reported.
    const fakeRest = {
      actions: {
        v2: {
          call: {
            make: async ({ method }) => {
              emit({ ev: 'rest-call', method });
              if (method === 'pull.config.get') {
                return { getData: () => ({ result: { ...config(), serverTime: new Date().toISOString() } }) };
              }
              throw new Error(`fake REST: ${method} not available`);
            },
          },
        },
      },
      callMethod: async (method) => {
        emit({ ev: 'rest-call', method });
        throw new Error(`fake REST: ${method} not available`);
      },
    };
    const logger = {};
    for (const level of ['log', 'debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency']) {
      logger[level] = async (message, context) => {
        if (level === 'debug' || level === 'info' || level === 'log') return;
        let ctx;
        try {
          ctx = JSON.parse(JSON.stringify(context ?? null, (_k, v) => (v instanceof Error ? { error: v.message } : v)));
        } catch {
          ctx = String(context);
        }
        emit({ ev: 'log', level, message: String(message), context: ctx });
      };
    }
    const client = new window.B24Js.B24PullClientManager({
      b24: fakeRest,
      userId: 1,
      siteId: 's1',
      configTimestamp,
      skipStorageInit: true,
    });
    client.setLogger(logger);
    client.subscribe({
      moduleId: 'browser',
      callback: (data) => {
        const mid = client.session.mid;
        if (data.command === 'end') emit({ ev: 'end', count: data.params?.count ?? null, conn: current, mid });
        else emit({ ev: 'msg', seq: data.params?.seq ?? null, conn: current, mid });
      },
    });
    client.subscribe({
      type: 'revision',
      callback: (data) => fail(`client disabled itself on a revision mismatch: ${JSON.stringify(data)}`),
    });
    window.pullClient = client;
    emit({ ev: 'start', mode: MODE, userAgent: navigator.userAgent });
    client.start(config()).then(
      () => emit({ ev: 'started' }),
      (e) => fail(`client.start() rejected: ${e?.message || JSON.stringify(e)}`),
    );
  }

  document.addEventListener('DOMContentLoaded', start);
})();

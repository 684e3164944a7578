// Runs the official Bitrix24 JS SDK pull client (`@bitrix24/b24jssdk`, B24PullClientManager),
// unmodified, in protocol v5 mode (config `server.version` 5 and a `jwt`) against a push-server,
// and reports what it sees. Driven by tests/interop.rs (`js_sdk_v5_*`).
//
// Browser globals as in pull-client.mjs: `window`, `document.location` (http:), `WebSocket`
// (the `ws` package, observed: opens, closes, every text received and sent) and a minimal
// `XMLHttpRequest` on node:http for long polling (observed: poll URLs and statuses, POSTs).
//
// Input (env):
//   MODE        v5-ws | v5-lp
//   SUB_URL     http://127.0.0.1:PORT, the subscriber listener
//   JWT         the token, as the portal signs it for user USER_ID
//   USER_ID     the client's user id
//   CHANNEL_PRIVATE, CHANNEL_SHARED  the channel ids the config also carries, as PHP's does
//               (the client checks their `end` dates and sends long-poll `mack:`s to the
//               publish URL with them; the connection itself uses only the token)
//   TIMEOUT_MS  overall deadline
//
// The driver publishes (through /bitrix/api/) messages with module_id "interop":
//   command "seq", params {seq}: counted; every seq once and in order is checked at the end
//   command "do", params {action, ...}: the client does something and reports it
//     action "publishSelf":   client.sendMessage([USER_ID], 'interop', 'fromClient', …)
//     action "publishChannel" (channel): client.sendMessageToChannels([channel], …)
//     action "lastSeen" (users): client.getUsersLastSeen(users)
//     action "watch" (user): client.subscribeUserStatusChange(user, cb)
//   command "end", params {count}: the script checks and exits.
//
// Output: one JSON object per line ({"ev": ...}), then {"summary": {...}}; exit 0 when every
// check passed.

import http from 'node:http';
import WebSocketImpl from 'ws';
import { B24PullClientManager } from '@bitrix24/b24jssdk';

const MODE = process.env.MODE || 'v5-ws';
const SUB_URL = (process.env.SUB_URL || '').replace(/\/+$/, '');
const JWT = process.env.JWT || '';
const USER_ID = Number(process.env.USER_ID || 0);
const CHANNEL_PRIVATE = process.env.CHANNEL_PRIVATE || '';
const CHANNEL_SHARED = process.env.CHANNEL_SHARED || '';
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 60000);
const websocket = MODE === 'v5-ws';

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}
const failures = [];
function fail(what) {
  failures.push(what);
  emit({ ev: 'failure', what });
}
if (!['v5-ws', 'v5-lp'].includes(MODE) || !SUB_URL.startsWith('http://') || !JWT || !USER_ID) {
  emit({ summary: { ok: false, failures: ['bad input: MODE, SUB_URL, JWT and USER_ID are required'] } });
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Transports, observed

const connections = [];
let current = null;
const sent = { pong: 0, mack: 0, rpc: [] };
const pings = [];
const rpcAnswers = [];
/** The mid of the last `incoming.message` seen on the wire (any transport). */
let lastWireMid = null;
function noteWire(text) {
  let v;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  for (const item of Array.isArray(v) ? v : [v]) {
    if (item && item.method === 'incoming.message' && item.params?.mid) lastWireMid = item.params.mid;
  }
  return v;
}

class ObservedWebSocket extends WebSocketImpl {
  constructor(url, ...rest) {
    super(url, ...rest);
    const conn = { n: connections.length + 1, kind: 'ws', url: String(url), messages: 0, close: null, opened: null, midBefore: lastWireMid };
    connections.push(conn);
    emit({ ev: 'ws-connect', n: conn.n, url: conn.url });
    this.addEventListener('open', () => {
      conn.opened = Date.now();
      emit({ ev: 'ws-open', n: conn.n });
    });
    this.addEventListener('message', (e) => {
      conn.messages += 1;
      current = { conn: conn.n, index: conn.messages };
      if (e.data === 'ping') {
        pings.push({ conn: conn.n, at: Date.now() });
        emit({ ev: 'ping', n: conn.n });
        return;
      }
      const v = noteWire(String(e.data));
      if (v === null) {
        fail(`non-JSON text from the server: ${String(e.data).slice(0, 200)}`);
      } else {
        for (const item of Array.isArray(v) ? v : [v]) {
          if (item && 'id' in item && ('result' in item || 'error' in item)) {
            rpcAnswers.push(item);
            emit({ ev: 'rpc-answer', answer: item });
          }
        }
      }
    });
    this.addEventListener('close', (e) => {
      conn.close = { code: e.code, reason: e.reason, at: Date.now() };
      emit({ ev: 'ws-close', n: conn.n, code: e.code, reason: e.reason });
    });
    this.addEventListener('error', (e) => emit({ ev: 'ws-error', n: conn.n, error: String(e?.message || e) }));
  }

  send(data, ...rest) {
    const text = String(data);
    if (text === 'pong') sent.pong += 1;
    else if (text.startsWith('mack:')) sent.mack += 1;
    else {
      sent.rpc.push(text);
      emit({ ev: 'ws-send', text });
    }
    return super.send(data, ...rest);
  }
}

const posts = [];
class MinimalXMLHttpRequest extends EventTarget {
  readyState = 0;
  status = 0;
  response = null;
  responseType = '';
  #method = 'GET';
  #url = '';
  #headers = {};
  #req = null;

  open(method, url) {
    this.#method = method;
    this.#url = url;
    this.#headers = {};
    this.status = 0;
    this.response = null;
    this.readyState = 1;
  }

  send(body) {
    const u = new URL(this.#url);
    const isPoll = this.#method === 'GET';
    const conn = { n: connections.length + 1, kind: 'lp', url: this.#url, messages: 0, status: null, midBefore: lastWireMid };
    if (isPoll) {
      connections.push(conn);
      emit({ ev: 'lp-request', n: conn.n, url: conn.url });
    }
    const req = http.request(
      { host: u.hostname, port: u.port, path: u.pathname + u.search, method: this.#method, agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          if (this.#req !== req) return;
          const buf = Buffer.concat(chunks);
          this.#headers = res.headers;
          this.status = res.statusCode;
          this.response = buf.toString('utf8');
          if (isPoll) {
            conn.status = res.statusCode;
            emit({ ev: 'lp-response', n: conn.n, status: res.statusCode, bytes: buf.length, lastMessageId: res.headers['last-message-id'] ?? null });
            if (res.statusCode === 200) {
              noteWire(buf.toString('utf8'));
              conn.messages = 1;
              current = { conn: conn.n, index: 1 };
            }
          } else {
            posts.push({ url: this.#url, body: String(body ?? ''), status: res.statusCode });
            emit({ ev: 'post-response', url: this.#url, body: String(body ?? ''), status: res.statusCode });
          }
          this.#finish();
        });
      },
    );
    req.on('error', (e) => {
      if (this.#req !== req) return;
      if (isPoll) emit({ ev: 'lp-error', n: conn.n, error: String(e.message) });
      this.status = 0;
      this.response = null;
      this.#finish();
    });
    this.#req = req;
    req.end(body == null ? undefined : Buffer.from(body));
  }

  #finish() {
    this.#req = null;
    this.readyState = 4;
    this.dispatchEvent(new Event('readystatechange'));
  }

  abort() {
    if (this.#req) {
      const req = this.#req;
      this.#req = null;
      req.destroy();
      this.status = 0;
      this.response = null;
      this.readyState = 4;
      this.dispatchEvent(new Event('readystatechange'));
    }
    this.readyState = 0;
  }

  getResponseHeader(name) {
    const v = this.#headers[String(name).toLowerCase()];
    return v === undefined ? null : String(v);
  }
}

globalThis.WebSocket = ObservedWebSocket;
globalThis.XMLHttpRequest = MinimalXMLHttpRequest;
globalThis.window = Object.assign(new EventTarget(), { WebSocket: ObservedWebSocket });
globalThis.document = { location: { href: 'http://portal.test/' } };

// ---------------------------------------------------------------------------------------------
// Config (as the module builds it for a v5 portal), REST, logger

const now = Date.now();
const iso = (ms) => new Date(ms).toISOString();
const CONFIG_TIMESTAMP = Math.floor(now / 1000);
const wsBase = SUB_URL.replace(/^http:/, 'ws:');

function makeConfig() {
  return {
    api: { revision_web: 19, revision_mobile: 3 },
    server: {
      version: 5,
      mode: 'personal',
      config_timestamp: CONFIG_TIMESTAMP,
      timeShift: 0,
      websocket_enabled: websocket,
      websocket: `${wsBase}/bitrix/subws/`,
      websocket_secure: `${wsBase}/bitrix/subws/`,
      long_polling: `${SUB_URL}/bitrix/sub/`,
      long_pooling_secure: `${SUB_URL}/bitrix/sub/`,
      publish_enabled: true,
      publish: `${SUB_URL}/bitrix/rest/`,
      publish_secure: `${SUB_URL}/bitrix/rest/`,
    },
    jwt: JWT,
    exp: Math.floor(now / 1000) + 12 * 3600,
    channels: {
      private: { id: CHANNEL_PRIVATE, start: iso(now - 60_000), end: iso(now + 12 * 3600_000), type: 'private' },
      shared: { id: CHANNEL_SHARED, start: iso(now - 60_000), end: iso(now + 12 * 3600_000), type: 'shared' },
    },
    publicChannels: {},
  };
}

const restCalls = [];
const fakeRest = {
  actions: {
    v2: {
      call: {
        make: async ({ method, params }) => {
          restCalls.push(method);
          emit({ ev: 'rest-call', method, params });
          if (method === 'pull.config.get') {
            const result = { ...makeConfig(), serverTime: new Date().toISOString() };
            return { getData: () => ({ result }) };
          }
          if (method === 'pull.api.user.getLastSeen') {
            // The portal's answer for users the push server does not know.
            const result = {};
            for (const u of params?.userIds ?? []) result[u] = 86400;
            return { getData: () => ({ result }) };
          }
          throw new Error(`fake REST: ${method} not available`);
        },
      },
    },
  },
  callMethod: async (method) => {
    restCalls.push(method);
    emit({ ev: 'rest-call', method });
    throw new Error(`fake REST: ${method} not available`);
  },
};

const logs = [];
function logAt(level) {
  return async (message, context) => {
    let ctx;
    try {
      ctx = context === undefined ? undefined : JSON.parse(JSON.stringify(context, (_k, v) => (v instanceof Error ? { error: v.message } : v)));
    } catch {
      ctx = String(context);
    }
    logs.push({ level, message: String(message), context: ctx });
    if (level !== 'debug' && level !== 'info') emit({ ev: 'log', level, message: String(message), context: ctx });
  };
}
const logger = {};
for (const level of ['log', 'debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency']) {
  logger[level] = logAt(level);
}

process.on('uncaughtException', (e) => fail(`uncaught exception: ${e?.stack || e}`));
process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e?.stack || JSON.stringify(e)}`));

// ---------------------------------------------------------------------------------------------
// The client

const client = new B24PullClientManager({
  b24: fakeRest,
  userId: USER_ID,
  siteId: 's1',
  configTimestamp: CONFIG_TIMESTAMP,
  skipStorageInit: true,
});
client.setLogger(logger);

const received = [];
const clientMessages = [];
const statusChanges = [];
const actions = [];
let endCount = null;
let finished = false;

function doAction(p) {
  const report = (result, error) => {
    const entry = { action: p.action, result: result ?? null, error: error ? String(error?.message || JSON.stringify(error)) : null };
    actions.push(entry);
    emit({ ev: 'action', ...entry });
  };
  switch (p.action) {
    case 'publishSelf':
      client.sendMessage([USER_ID], 'interop', 'fromClient', { text: 'to myself' }, 60).then(report, (e) => report(null, e));
      break;
    case 'publishChannel':
      client.sendMessageToChannels([p.channel], 'interop', 'toChannel', { text: 'to a channel' }, 60).then(report, (e) => report(null, e));
      break;
    case 'lastSeen':
      client.getUsersLastSeen(p.users).then(report, (e) => report(null, e));
      break;
    case 'watch':
      client
        .subscribeUserStatusChange(p.user, (change) => {
          statusChanges.push(change);
          emit({ ev: 'user-status', ...change });
        })
        .then(() => report({}), (e) => report(null, e));
      break;
    default:
      fail(`unknown action ${p.action}`);
  }
}

client.subscribe({
  moduleId: 'interop',
  callback: (data) => {
    const at = current ? { ...current } : null;
    if (data.command === 'do') {
      doAction(data.params);
      return;
    }
    if (data.command === 'end') {
      endCount = data.params?.count ?? null;
      emit({ ev: 'end', count: endCount });
      setImmediate(finish);
      return;
    }
    const entry = {
      command: data.command,
      seq: data.params?.seq ?? null,
      conn: at?.conn ?? null,
      transportMessage: at?.index ?? null,
      sessionMid: client.session.mid,
      sender: data.extra?.sender ?? null,
    };
    received.push(entry);
    emit({ ev: 'msg', ...entry });
  },
});
client.subscribe({
  type: 'client',
  moduleId: 'interop',
  callback: (data) => {
    const entry = { command: data.command, params: data.params, sender: data.extra?.sender ?? null };
    clientMessages.push(entry);
    emit({ ev: 'client-msg', ...entry });
  },
});
client.subscribe({ type: 'status', callback: (data) => emit({ ev: 'status', status: data.status }) });
client.subscribe({
  type: 'revision',
  callback: (data) => fail(`client disabled itself on a revision mismatch: ${JSON.stringify(data)}`),
});

const deadline = setTimeout(() => {
  fail(`timed out after ${TIMEOUT_MS} ms (received ${received.length} messages, end ${endCount === null ? 'not ' : ''}seen)`);
  finish();
}, TIMEOUT_MS);

emit({ ev: 'start', mode: MODE, node: process.version });
client.start(makeConfig()).then(
  () => emit({ ev: 'started' }),
  (e) => fail(`client.start() rejected: ${e?.message || JSON.stringify(e)}`),
);

// ---------------------------------------------------------------------------------------------
// Checks

function finish() {
  if (finished) return;
  finished = true;
  clearTimeout(deadline);
  try {
    client.destroy();
  } catch (e) {
    fail(`client.destroy() threw: ${e?.message || e}`);
  }
  const seqs = received.map((m) => m.seq);
  if (endCount === null) {
    fail('the "end" message never arrived');
  } else {
    const expected = Array.from({ length: endCount }, (_, i) => i + 1);
    if (JSON.stringify(seqs) !== JSON.stringify(expected)) {
      fail(`received seqs ${JSON.stringify(seqs)}, expected 1..${endCount} once each in order`);
    }
  }
  for (const l of logs) {
    const m = l.message.toLowerCase();
    if (m.includes('duplicate') || m.includes('could not decode') || m.includes('unknown rpc') || m.includes('no pings are received')) {
      fail(`client logged: ${l.message}`);
    }
  }
  if (restCalls.includes('pull.config.get')) fail('the client reloaded its config (pull.config.get)');
  const serverCloses = connections.filter((c) => c.kind === 'ws' && c.close).map((c) => ({ n: c.n, ...c.close }));
  const polls = connections.filter((c) => c.kind === 'lp');
  const resumes = [];
  for (let i = 1; i < connections.length; i++) {
    const mid = new URL(connections[i].url).searchParams.get('mid');
    resumes.push({ conn: connections[i].n, mid, lastMidBefore: connections[i].midBefore });
  }
  const summary = {
    ok: failures.length === 0,
    failures,
    seqs,
    messages: received,
    clientMessages,
    statusChanges,
    actions,
    rpcAnswers,
    pings: pings.length,
    pingGaps: pings.slice(1).map((p, i) => (p.conn === pings[i].conn ? p.at - pings[i].at : null)).filter((g) => g !== null),
    sent: { pong: sent.pong, mack: sent.mack, rpc: sent.rpc.length },
    connections: connections.map((c) => ({ n: c.n, kind: c.kind, url: c.url.replace(/token=[^&]*/, 'token=…'), status: c.status ?? null, close: c.close ?? null, opened: c.opened ?? null })),
    serverCloses,
    polls: polls.length,
    posts: posts.map((p) => ({ url: p.url.replace(/\?.*/, ''), body: p.body.slice(0, 60), status: p.status })),
    resumes,
    restCalls,
  };
  emit({ summary });
  setTimeout(() => process.exit(summary.ok ? 0 : 1), 50);
}

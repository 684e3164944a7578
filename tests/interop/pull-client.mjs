// Runs the official Bitrix24 JS SDK pull client (`@bitrix24/b24jssdk`, class PullClient, exported as
// B24PullClientManager) against a push-server, unmodified, and checks what it receives.
//
// The client is given its config the way a portal page gives it: `PullClient.start(config)` with the
// object PHP's REST `pull.config.get` returns. A fake REST client answers `pull.config.get` with the
// same object, but any REST call is reported (only a 4010 close or an expired config makes the client
// reload its config, and neither may happen here).
//
// Browser globals provided, and nothing else: `window` (an EventTarget with `WebSocket`),
// `document.location` (an http: page, so the client uses the non-secure URLs), `WebSocket` (the `ws`
// package) and, for long polling, a minimal `XMLHttpRequest` on node:http. Both transports are
// observed (not altered) so that closes, poll statuses and request URLs can be reported.
//
// Input (env):
//   MODE            v3-ws | v3-lp | v4-ws | v4-lp
//   SUB_URL         http://127.0.0.1:PORT — the server's subscriber listener
//   CHANNEL_PRIVATE the private item as PHP signs it, e.g. <priv>:<pub>.<sig> (v4) or <priv>.<sig>
//   CHANNEL_SHARED  the shared item <shared>.<sig> (optional)
//   PUBLIC_ID       <pub>.<sig(public:<pub>)> (optional, config `public_id`)
//   TIMEOUT_MS      overall deadline (default 30000)
//   CLIENT_PUBLISH_AT  v4: when message seq N arrives, the client publishes one message to its own
//                   public channel with sendMessageToChannels (WS binary, or POST /bitrix/rest/ when
//                   long polling); it must come back once to the client's "client" subscribers
//
// The driver (tests/interop.rs) publishes messages with module_id "interop", command "seq" and
// params {seq: 1..N}, closes the client's connection from the server side at some point, and finally
// publishes command "end" with params {count: N}. The script then checks and exits.
//
// Output: one JSON object per line on stdout. Events while running ({"ev": ...}), then one
// {"summary": {...}} line. Exit code 0 only when every check passed.

import http from 'node:http';
import WebSocketImpl from 'ws';
import { B24PullClientManager } from '@bitrix24/b24jssdk';

const MODE = process.env.MODE || 'v3-ws';
const SUB_URL = (process.env.SUB_URL || '').replace(/\/+$/, '');
const CHANNEL_PRIVATE = process.env.CHANNEL_PRIVATE || '';
const CHANNEL_SHARED = process.env.CHANNEL_SHARED || '';
const PUBLIC_ID = process.env.PUBLIC_ID || '';
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 30000);
const CLIENT_PUBLISH_AT = Number(process.env.CLIENT_PUBLISH_AT || 0);

const MODES = {
  'v3-ws': { version: 3, websocket: true },
  'v3-lp': { version: 3, websocket: false },
  'v4-ws': { version: 4, websocket: true },
  'v4-lp': { version: 4, websocket: false },
};

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const failures = [];
function fail(what) {
  failures.push(what);
  emit({ ev: 'failure', what });
}

if (!MODES[MODE]) {
  fail(`unknown MODE ${JSON.stringify(MODE)}`);
}
if (!SUB_URL.startsWith('http://')) {
  fail(`SUB_URL must be http://host:port, got ${JSON.stringify(SUB_URL)}`);
}
if (!CHANNEL_PRIVATE) {
  fail('CHANNEL_PRIVATE is required');
}
if (failures.length > 0) {
  emit({ summary: { ok: false, failures } });
  process.exit(2);
}
const mode = MODES[MODE];
const binary = mode.version === 4;

// ---------------------------------------------------------------------------------------------
// What the transports saw

/** One entry per connection: a WebSocket, or (long polling) one poll request. */
const connections = [];
/** Client publishes over HTTP (long polling) and their answers. */
const posts = [];
/** The transport message being dispatched right now: {conn, index} (index within its connection). */
let current = null;
const transport = { textMessages: 0, binaryMessages: 0, otherMessages: 0 };

class ObservedWebSocket extends WebSocketImpl {
  constructor(url, ...rest) {
    super(url, ...rest);
    const conn = { n: connections.length + 1, kind: 'ws', url: String(url), messages: 0, close: null };
    connections.push(conn);
    emit({ ev: 'ws-connect', n: conn.n, url: conn.url });
    // Registered before the client's own listeners, so these run first.
    this.addEventListener('open', () => emit({ ev: 'ws-open', n: conn.n }));
    this.addEventListener('message', (e) => {
      conn.messages += 1;
      if (typeof e.data === 'string') transport.textMessages += 1;
      else if (e.data instanceof ArrayBuffer) transport.binaryMessages += 1;
      else transport.otherMessages += 1;
      current = { conn: conn.n, index: conn.messages };
    });
    this.addEventListener('close', (e) => {
      conn.close = { code: e.code, reason: e.reason };
      emit({ ev: 'ws-close', n: conn.n, code: e.code, reason: e.reason });
    });
    this.addEventListener('error', (e) => emit({ ev: 'ws-error', n: conn.n, error: String(e?.message || e) }));
  }
}

/** The subset of XMLHttpRequest the pull client uses, on node:http (responses are read whole). */
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
    const conn = { n: connections.length + 1, kind: 'lp', method: this.#method, url: this.#url, messages: 0, status: null };
    const isPoll = this.#method === 'GET';
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
          this.response =
            this.responseType === 'arraybuffer'
              ? buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length)
              : buf.toString('utf8');
          if (!isPoll) {
            posts.push({ url: this.#url, status: res.statusCode, body: buf.toString('utf8') });
            emit({ ev: 'post-response', status: res.statusCode, body: buf.toString('utf8') });
          }
          if (isPoll) {
            conn.status = res.statusCode;
            if (res.statusCode === 304) {
              conn.lastMessageId = res.headers['last-message-id'] ?? null;
              conn.expires = res.headers.expires ?? null;
            }
            emit({ ev: 'lp-response', n: conn.n, status: res.statusCode, bytes: buf.length, lastMessageId: conn.lastMessageId });
            if (res.statusCode === 200) {
              conn.messages = 1;
              if (typeof this.response === 'string') transport.textMessages += 1;
              else transport.binaryMessages += 1;
              current = { conn: conn.n, index: 1 };
            }
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
// Config, REST and logger

const now = Date.now();
const iso = (ms) => new Date(ms).toISOString();
const [pubId = '', pubSig = ''] = PUBLIC_ID.split('.');
const CONFIG_TIMESTAMP = Math.floor(now / 1000);
const wsBase = SUB_URL.replace(/^http:/, 'ws:');

function makeConfig() {
  const channels = {
    private: {
      id: CHANNEL_PRIVATE,
      public_id: PUBLIC_ID || undefined,
      start: iso(now - 60_000),
      end: iso(now + 12 * 3600_000),
      type: 'private',
    },
  };
  if (CHANNEL_SHARED) {
    channels.shared = { id: CHANNEL_SHARED, start: iso(now - 60_000), end: iso(now + 12 * 3600_000), type: 'shared' };
  }
  return {
    api: { revision_web: 19, revision_mobile: 3 },
    server: {
      version: mode.version,
      mode: 'personal',
      config_timestamp: CONFIG_TIMESTAMP,
      timeShift: 0,
      websocket_enabled: mode.websocket,
      websocket: `${wsBase}/bitrix/subws/`,
      websocket_secure: `${wsBase}/bitrix/subws/`,
      long_polling: `${SUB_URL}/bitrix/sub/`,
      long_pooling_secure: `${SUB_URL}/bitrix/sub/`,
      publish_enabled: mode.version > 3,
      publish: `${SUB_URL}/bitrix/rest/`,
      publish_secure: `${SUB_URL}/bitrix/rest/`,
    },
    channels,
    publicChannels: pubId
      ? { 1: { user_id: 1, public_id: pubId, signature: pubSig, start: iso(now - 60_000), end: iso(now + 12 * 3600_000) } }
      : {},
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

/** Every log line of the client, by level. Parse errors and duplicates are failures. */
const logs = [];
function logAt(level) {
  return async (message, context) => {
    let ctx;
    try {
      ctx = context === undefined ? undefined : JSON.parse(JSON.stringify(context, errorReplacer));
    } catch {
      ctx = String(context);
    }
    logs.push({ level, message: String(message), context: ctx });
    if (level !== 'debug' && level !== 'info') {
      emit({ ev: 'log', level, message: String(message), context: ctx });
    }
  };
}
function errorReplacer(_key, value) {
  if (value instanceof Error) return { error: value.message };
  return value;
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
  userId: 1,
  siteId: 's1',
  configTimestamp: CONFIG_TIMESTAMP,
  skipStorageInit: true,
});
client.setLogger(logger);

/** Messages as the client's subscribers see them. */
const received = [];
let endCount = null;
let finished = false;

client.subscribe({
  moduleId: 'interop',
  callback: (data) => {
    const at = current ? { ...current } : null;
    const entry = {
      command: data.command,
      seq: data.params?.seq ?? null,
      conn: at?.conn ?? null,
      transportMessage: at?.index ?? null,
      sessionMid: client.session.mid,
      sender: data.extra?.sender ?? null,
    };
    if (data.command === 'end') {
      endCount = data.params?.count ?? null;
      emit({ ev: 'end', count: endCount, conn: entry.conn });
      setImmediate(finish);
      return;
    }
    received.push(entry);
    emit({ ev: 'msg', ...entry });
    if (CLIENT_PUBLISH_AT && entry.seq === CLIENT_PUBLISH_AT) {
      emit({ ev: 'client-publish' });
      client
        .sendMessageToChannels([PUBLIC_ID], 'interop', 'fromClient', { text: 'hello from the client' }, 60)
        .catch((e) => fail(`sendMessageToChannels rejected: ${e?.message || e}`));
    }
  },
});
/** Messages published by a client (sender type CLIENT), as the client's subscribers see them. */
const clientMessages = [];
client.subscribe({
  type: 'client',
  moduleId: 'interop',
  callback: (data) => {
    const entry = { command: data.command, params: data.params, sender: data.extra?.sender ?? null, conn: current?.conn ?? null };
    clientMessages.push(entry);
    emit({ ev: 'client-msg', ...entry });
  },
});
client.subscribe({
  type: 'status',
  callback: (data) => emit({ ev: 'status', status: data.status }),
});
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

function midParam(url) {
  try {
    return new URL(url).searchParams.get('mid');
  } catch {
    return null;
  }
}

function finish() {
  if (finished) return;
  finished = true;
  clearTimeout(deadline);
  try {
    client.destroy();
  } catch (e) {
    fail(`client.destroy() threw: ${e?.message || e}`);
  }

  // 1. every message exactly once, in publish order
  const seqs = received.map((m) => m.seq);
  if (endCount === null) {
    fail('the "end" message never arrived');
  } else {
    const expected = Array.from({ length: endCount }, (_, i) => i + 1);
    if (JSON.stringify(seqs) !== JSON.stringify(expected)) {
      const dups = seqs.filter((s, i) => seqs.indexOf(s) !== i);
      const missing = expected.filter((s) => !seqs.includes(s));
      fail(`received seqs ${JSON.stringify(seqs)}, expected 1..${endCount} once each in order (missing ${JSON.stringify(missing)}, duplicated ${JSON.stringify(dups)})`);
    }
  }

  // 2. no parse errors, no duplicates dropped by the client, no config reloads
  const parseErrors = logs.filter((l) => /could not parse|parseResponse|error pullEvent|PULL ERROR/i.test(`${l.message} ${JSON.stringify(l.context ?? '')}`));
  const duplicates = logs.filter((l) => /duplicate message/i.test(l.message));
  const connectionErrors = logs.filter((l) => /connection error/i.test(l.message));
  const otherProblems = logs.filter(
    (l) => !['debug', 'info'].includes(l.level) && !parseErrors.includes(l) && !duplicates.includes(l) && !connectionErrors.includes(l),
  );
  for (const l of parseErrors) fail(`client reported a parse error: ${l.message} ${JSON.stringify(l.context ?? '')}`);
  for (const l of duplicates) fail(`client dropped a duplicate: ${l.message}`);
  for (const l of otherProblems) fail(`client logged ${l.level}: ${l.message} ${JSON.stringify(l.context ?? '')}`);
  if (restCalls.length > 0) fail(`client called REST (config reload or similar): ${JSON.stringify(restCalls)}`);

  // 3. mode actually used
  const polls = connections.filter((c) => c.kind === 'lp');
  const sockets = connections.filter((c) => c.kind === 'ws');
  if (mode.websocket && (polls.length > 0 || sockets.length === 0)) fail(`expected WebSocket only, saw ${sockets.length} sockets and ${polls.length} polls`);
  if (!mode.websocket && (sockets.length > 0 || polls.length === 0)) fail(`expected long polling only, saw ${sockets.length} sockets and ${polls.length} polls`);
  for (const c of connections) {
    const q = new URL(c.url).searchParams;
    if ((q.get('binaryMode') === 'true') !== binary) fail(`connection ${c.n} URL binaryMode is ${q.get('binaryMode')}, expected ${binary}: ${c.url}`);
  }
  if (binary && transport.textMessages > 0) fail(`binary mode got ${transport.textMessages} text transport messages`);
  if (!binary && transport.binaryMessages > 0) fail(`text mode got ${transport.binaryMessages} binary transport messages`);
  if (transport.otherMessages > 0) fail(`${transport.otherMessages} transport messages of unexpected type`);
  if (binary) {
    for (const m of received) {
      if (!m.sender || m.sender.type !== 2) fail(`seq ${m.seq}: extra.sender ${JSON.stringify(m.sender)}, expected {type: 2 (BACKEND)}`);
    }
  }

  // client publishing (v4)
  if (CLIENT_PUBLISH_AT) {
    const ok = clientMessages.filter((m) => m.command === 'fromClient' && m.params?.text === 'hello from the client');
    if (clientMessages.length !== 1 || ok.length !== 1) {
      fail(`expected the client's own publish back once, got ${JSON.stringify(clientMessages)}`);
    }
    for (const m of clientMessages) {
      if (!m.sender || m.sender.type !== 1 || m.sender.id !== pubId) {
        fail(`client message sender ${JSON.stringify(m.sender)}, expected {type: 1 (CLIENT), id: ${pubId}}`);
      }
    }
    if (!mode.websocket && (posts.length !== 1 || posts[0].status !== 200)) {
      fail(`expected one POST to the publish URL answered 200, got ${JSON.stringify(posts)}`);
    }
  } else if (clientMessages.length > 0) {
    fail(`unexpected client messages ${JSON.stringify(clientMessages)}`);
  }

  // 4. long polling: a 304's Last-Message-Id becomes the next poll's mid (the client reads it
  //    only when Expires is exactly its magic date)
  const notModified = polls.filter((c) => c.status === 304);
  for (const c of notModified) {
    const next = connections.find((x) => x.n === c.n + 1);
    if (!next) continue;
    if (midParam(next.url) !== c.lastMessageId) {
      fail(`poll ${c.n} answered 304 with Last-Message-Id ${c.lastMessageId} (Expires ${c.expires}), but the client's next poll sent mid=${midParam(next.url)}`);
    }
  }

  // 5. server-side closes, reconnects and resume by mid
  const serverCloses = mode.websocket
    ? sockets.filter((c) => c.close && c.close.code !== 1000 && c !== sockets[sockets.length - 1]).map((c) => ({ n: c.n, code: c.close.code, reason: c.close.reason }))
    : polls.filter((c) => c.status !== null && c.status !== 200 && c.status !== 304).map((c) => ({ n: c.n, status: c.status }));
  const resumes = [];
  for (const close of serverCloses) {
    // the last message the client had before this close, and the next connection's mid
    const before = received.filter((m) => m.conn !== null && m.conn <= close.n);
    const lastMid = before.length > 0 ? before[before.length - 1].sessionMid : null;
    const next = connections.find((c) => c.n > close.n);
    const sentMid = next ? midParam(next.url) : null;
    const after = received.filter((m) => next && m.conn === next.n);
    const resume = { close, lastMidBefore: lastMid, reconnectMid: sentMid, nextConn: next?.n ?? null, firstAfter: after[0] ?? null };
    resumes.push(resume);
    if (!next) fail(`no reconnect after server close ${JSON.stringify(close)}`);
    else if (lastMid && sentMid !== lastMid) fail(`reconnect ${next.n} sent mid=${sentMid}, expected the last mid before the close ${lastMid}`);
  }
  if (serverCloses.length === 0) fail('the server never closed the client (expected at least one server-side close)');
  // A refused poll is reported by the client as a connection error; a WebSocket close is not.
  const allowedConnectionErrors = mode.websocket ? 0 : serverCloses.length;
  if (connectionErrors.length > allowedConnectionErrors) {
    fail(`client logged ${connectionErrors.length} connection errors, expected at most ${allowedConnectionErrors}: ${JSON.stringify(connectionErrors)}`);
  }

  const summary = {
    ok: failures.length === 0,
    mode: MODE,
    received: received.length,
    seqs,
    endCount,
    connections: connections.map((c) => ({ n: c.n, kind: c.kind, mid: midParam(c.url), binaryMode: new URL(c.url).searchParams.get('binaryMode'), messages: c.messages, close: c.close ?? undefined, status: c.status ?? undefined, lastMessageId: c.lastMessageId })),
    notModified: notModified.length,
    serverCloses,
    resumes,
    messages: received,
    transport,
    restCalls,
    clientMessages,
    posts,
    logs: logs.filter((l) => l.level !== 'debug'),
    failures,
  };
  emit({ summary });
  setImmediate(() => process.exit(summary.ok ? 0 : 1));
}

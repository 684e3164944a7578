// Checks that Node.js push server 0.4.0 processes and push-server can share one Redis
// (docs/redis.md, "Sharing Redis with Node 0.4.0 processes"). Run through
// tools/node-coexist.sh, which passes NODE_DIR (an installed 0.4.0 tree) and PUSH_SERVER.
//
// It starts a private redis-server, a Node sub and pub process and push-server, drives
// subscribers and publishes on both sides, prints PASS/FAIL per check and exits 1 on any
// FAIL. Every wait has a deadline; every process it started is killed on exit.
"use strict";

const { spawn, execFileSync } = require("child_process");
const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const path = require("path");

const NODE_DIR = path.resolve(process.env.NODE_DIR || "");
const PUSH_SERVER = process.env.PUSH_SERVER;
const WebSocket = require(path.join(NODE_DIR, "node_modules", "ws"));

const KEY = "coexistKey" + crypto.randomBytes(12).toString("hex");
const RUN = fs.mkdtempSync("/tmp/node-coexist-");
const REDIS_SOCK = path.join(RUN, "redis.sock");
// push-server listens on Unix sockets. Node 0.4.0 can only listen on TCP (its `path` setting
// comes with `port: undefined`, which net takes for port 0), and net ignores its `hostname`
// setting: its listeners bind every interface, on random ports, for the minute of the run.
const RUST_SUB = path.join(RUN, "sub.sock"), RUST_PUB = path.join(RUN, "pub.sock");
let NODE_WS, NODE_LP, NODE_PUB;
const OLD_MID = "10000000000000000000000001";
const T = 5000;

const children = {};
let failures = 0;

function report(name, ok, detail) {
	if (!ok) {
		failures++;
	}
	console.log(`${ok ? "PASS" : "FAIL"} ${name}${detail ? ` (${detail})` : ""}`);
}

async function check(name, fn) {
	try {
		const detail = await fn();
		report(name, true, typeof detail === "string" ? detail : "");
	} catch (e) {
		report(name, false, e && e.message ? e.message : String(e));
	}
}

function assert(cond, msg) {
	if (!cond) {
		throw new Error(msg);
	}
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

async function waitFor(what, fn, ms = T) {
	const end = Date.now() + ms;
	for (;;) {
		const v = await fn().catch(() => undefined);
		if (v) {
			return v;
		}
		if (Date.now() > end) {
			throw new Error(`timed out waiting for ${what}`);
		}
		await sleep(50);
	}
}

// ------------------------------------------------------------------------------------------
// processes

function start(name, cmd, args, opts) {
	const out = fs.openSync(path.join(RUN, name + ".log"), "a");
	const child = spawn(cmd, args, { stdio: ["ignore", out, out], ...opts });
	children[name] = child;
	return child;
}

function stop(name) {
	const child = children[name];
	delete children[name];
	if (!child || child.exitCode !== null) {
		return Promise.resolve();
	}
	return new Promise(resolve => {
		child.once("exit", resolve);
		child.kill("SIGTERM");
		setTimeout(() => child.kill("SIGKILL"), 3000).unref();
	});
}

function alive(name) {
	return children[name] && children[name].exitCode === null;
}

function cleanup() {
	for (const name of Object.keys(children)) {
		try {
			children[name].kill("SIGKILL");
		} catch (e) {
			// already gone
		}
	}
	if (!process.env.KEEP_RUN) {
		fs.rmSync(RUN, { recursive: true, force: true });
	}
}

process.on("exit", cleanup);
for (const sig of ["SIGINT", "SIGTERM"]) {
	process.on(sig, () => process.exit(2));
}

function nodeConfig(kind) {
	const storage = { type: "redis", socket: REDIS_SOCK, messageTTL: 86400, channelTTL: 86400, onlineTTL: 120, onlineDelta: 10 };
	const debug = { folderName: path.join(RUN, "node-" + kind), ip: [], trustProxy: true };
	const config = kind === "sub"
		? {
			servers: [
				{ name: "sub-ws", port: NODE_WS, hostname: "127.0.0.1", routes: { sub: "/bitrix/subws/" } },
				{ name: "sub-lp", port: NODE_LP, hostname: "127.0.0.1", routes: { sub: "/bitrix/sub/" } },
			],
			clusterMode: true, processUniqueId: "node-sub", storage, security: { key: KEY }, debug,
		}
		: {
			servers: [{ name: "pub", port: NODE_PUB, hostname: "127.0.0.1",
				routes: { pub: "/bitrix/pub/", stat: "/server-stat/", rest: "/bitrix/rest/" } }],
			publishMode: true, clusterMode: true, processUniqueId: "node-pub", storage, security: { key: KEY }, debug,
		};
	const file = path.join(RUN, `node-${kind}.json`);
	fs.writeFileSync(file, JSON.stringify(config));
	return file;
}

async function startNode(kind) {
	start("node-" + kind, process.execPath, ["server.js", "--config", nodeConfig(kind)], { cwd: NODE_DIR });
	const port = kind === "sub" ? NODE_LP : NODE_PUB;
	await waitFor(`node ${kind} listening`, () => request(port, "OPTIONS", "/").then(() => true), 10000);
}

async function startRust() {
	start("push-server", PUSH_SERVER, [], {
		env: {
			PATH: process.env.PATH, SECURITY_KEY: KEY, REDIS_SOCK, RUN_DIR: RUN, STATE_DIR: path.join(RUN, "state"),
			SUB_SOCK: RUST_SUB, PUB_SOCK: RUST_PUB, SUB_LISTEN: "", PUB_LISTEN: "", LOG_LEVEL: "info",
		},
	});
	await waitFor("push-server store up", () => request(RUST_PUB, "GET", "/health").then(r => r.status === 200), 10000);
}

function redis(...args) {
	return execFileSync("redis-cli", ["-s", REDIS_SOCK, ...args], { encoding: "latin1", stdio: ["ignore", "pipe", "ignore"] });
}

// ------------------------------------------------------------------------------------------
// protocol helpers

const sign = data => crypto.createHmac("sha1", KEY).update(data).digest("hex");
const newId = () => crypto.randomBytes(16).toString("hex");
const signed = id => `${id}.${sign(id)}`;

// `addr`: a TCP port on loopback (Node) or a Unix socket path (push-server).
function request(addr, method, urlPath, body, headers = {}) {
	const to = typeof addr === "number" ? { host: "127.0.0.1", port: addr } : { socketPath: addr };
	return new Promise((resolve, reject) => {
		const req = http.request({ ...to, method, path: urlPath, headers, agent: false }, res => {
			const chunks = [];
			res.on("data", c => chunks.push(c));
			res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
		});
		req.setTimeout(45000, () => req.destroy(new Error("request timeout")));
		req.on("error", reject);
		req.end(body);
	});
}

function frames(text) {
	const out = [];
	const re = /#!NGINXNMS!#(.*?)#!NGINXNME!#/gs;
	let m;
	while ((m = re.exec(text)) !== null) {
		out.push(JSON.parse(m[1]));
	}
	return out;
}

// A long poll; resolves with its answer (callers wait for the channel to count online
// before they publish).
function longPoll(port, channel, mid) {
	return request(port, "GET", `/bitrix/sub/?CHANNEL_ID=${signed(channel)}${mid ? `&mid=${mid}` : ""}`);
}

function publishText(port, channels, text, expiry) {
	const headers = expiry ? { "Message-Expiry": String(expiry) } : {};
	return request(port, "POST", `/bitrix/pub/?CHANNEL_ID=${channels.join("/")}`, text, headers);
}

async function online(port, channel) {
	const r = await request(port, "GET", `/bitrix/pub/?CHANNEL_ID=${channel}`);
	return JSON.parse(r.body.toString()).infos.some(i => i.channel === channel);
}

// Minimal protobuf: enough for RequestBatch out and ResponseBatch in.
function varint(n) {
	const b = [];
	while (n > 127) {
		b.push((n & 127) | 128);
		n >>>= 7;
	}
	b.push(n);
	return Buffer.from(b);
}
const field = (no, bytes) => Buffer.concat([varint((no << 3) | 2), varint(bytes.length), bytes]);

// RequestBatch { Request { IncomingMessagesRequest { IncomingMessage… } } }. A private
// receiver is a 32-hex id; a public one is {pub} and gets its raw public signature.
function v4Batch(channels, body, expiry, count = 1) {
	const receivers = channels.map(c => (typeof c === "string"
		? field(1, Buffer.concat([field(1, Buffer.from(c, "hex")), Buffer.from([16, 1])]))
		: field(1, Buffer.concat([field(1, Buffer.from(c.pub, "hex")),
			field(3, crypto.createHmac("sha1", KEY).update("public:" + c.pub).digest())]))));
	const msgs = Array.from({ length: count }, (_, i) => field(1, Buffer.concat([...receivers,
		field(3, Buffer.from(count > 1 ? body.replace("}", `,"i":${i}}`) : body)), varint(4 << 3), varint(expiry)])));
	return field(1, field(1, Buffer.concat(msgs)));
}

function fields(buf) {
	const out = [];
	let i = 0;
	const rd = () => {
		let n = 0, s = 0, b;
		do {
			b = buf[i++];
			n += (b & 127) * 2 ** s;
			s += 7;
		} while (b & 128);
		return n;
	};
	while (i < buf.length) {
		const tag = rd(), no = Math.floor(tag / 8), wt = tag & 7;
		if (wt === 0) {
			out.push([no, rd()]);
		} else if (wt === 2) {
			const len = rd();
			out.push([no, buf.subarray(i, i + len)]);
			i += len;
		} else if (wt === 5) {
			out.push([no, buf.readUInt32LE(i)]);
			i += 4;
		} else if (wt === 1) {
			i += 8;
		} else {
			throw new Error("bad wire type " + wt);
		}
	}
	return out;
}

// ResponseBatch -> [{mid, body}]
function v4Messages(buf) {
	const out = [];
	for (const [, response] of fields(buf).filter(f => f[0] === 1)) {
		for (const [, outgoing] of fields(response).filter(f => f[0] === 1)) {
			for (const [, m] of fields(outgoing).filter(f => f[0] === 1)) {
				const f = fields(m);
				out.push({ mid: f.find(x => x[0] === 1)[1].toString("hex"), body: (f.find(x => x[0] === 2) || [0, ""])[1].toString() });
			}
		}
	}
	return out;
}

class Ws {
	constructor(port, query) {
		this.got = [];
		this.closed = null;
		const base = typeof port === "number" ? `ws://127.0.0.1:${port}` : `ws+unix://${port}:`;
		this.ws = new WebSocket(`${base}/bitrix/subws/?${query}`);
		this.ws.on("message", (data, isBinary) => this.got.push(isBinary ? data : data.toString()));
		this.ws.on("close", code => {
			this.closed = code;
		});
		this.ws.on("error", () => {});
		this.open = new Promise((resolve, reject) => {
			this.ws.once("open", resolve);
			this.ws.once("close", code => reject(new Error(`closed ${code} before open`)));
		});
	}
	texts() {
		return this.got.filter(m => typeof m === "string");
	}
	v3() {
		return this.texts().flatMap(frames);
	}
	v4() {
		return this.got.filter(m => typeof m !== "string").flatMap(v4Messages);
	}
	v5() {
		return this.texts().filter(t => t !== "ping").map(t => JSON.parse(t)).flatMap(j => (Array.isArray(j) ? j : [j]));
	}
	close() {
		this.ws.terminate();
	}
}

function jwt(claims) {
	const b64 = o => Buffer.from(JSON.stringify(o)).toString("base64url");
	const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
	return head + "." + crypto.createHmac("sha256", KEY).update(head).digest("base64url");
}

function v5Query(user) {
	const now = Math.floor(Date.now() / 1000);
	return `token=${encodeURIComponent(jwt({ iat: now, exp: now + 3600, sub: String(user) }))}&jsonRpc=true&revision=19`;
}

async function backend(body) {
	const text = JSON.stringify(body);
	const r = await request(RUST_PUB, "POST", `/bitrix/api/?signature=${sign(text)}`, text);
	assert(r.status === 200, `backend answered ${r.status} ${r.body}`);
	return JSON.parse(r.body.toString());
}

function nodeErrors() {
	const lines = [];
	for (const kind of ["sub", "pub"]) {
		const dir = path.join(RUN, "node-" + kind);
		for (const f of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
			if (/^(error|system-error)\./.test(f)) {
				lines.push(...fs.readFileSync(path.join(dir, f), "utf8").split("\n").filter(Boolean).map(l => `${kind}/${f}: ${l}`));
			}
		}
	}
	return lines;
}

// ------------------------------------------------------------------------------------------
// the checks

// One live message from publisher `pubPort` to a subscriber on `subPort` by long poll.
async function liveLongPoll(subPort, pubPort, isOnline) {
	const c = newId();
	const answer = longPoll(subPort, c);
	await waitFor("the long poll to count online", () => isOnline(c));
	const text = `{"lp":"${c}"}`;
	const p = await publishText(pubPort, [c], text);
	assert(p.status === 200, `publish answered ${p.status}`);
	const r = await answer;
	const got = frames(r.body.toString());
	assert(r.status === 200 && got.length === 1 && JSON.stringify(got[0].text) === text, `got ${r.status} ${r.body}`);
	return got[0].mid;
}

async function liveWs(subPort, pubPort, isOnline, binary) {
	const c = newId();
	const ws = new Ws(subPort, `CHANNEL_ID=${signed(c)}${binary ? "&binaryMode=true" : ""}`);
	try {
		await ws.open;
		await waitFor("the WebSocket to count online", () => isOnline(c));
		const text = `{"ws":"${c}"}`;
		const p = binary
			? await request(pubPort, "POST", "/bitrix/pub/?binaryMode=true", v4Batch([c], text, 60))
			: await publishText(pubPort, [c], text);
		assert(p.status === 200, `publish answered ${p.status}`);
		const got = await waitFor("the message", async () => {
			const m = binary ? ws.v4() : ws.v3().map(f => ({ mid: f.mid, body: JSON.stringify(f.text) }));
			return m.length ? m : null;
		});
		await sleep(500);
		const all = binary ? ws.v4() : ws.v3();
		assert(all.length === 1 && got[0].body === text, `got ${JSON.stringify(all)}`);
		return got[0].mid;
	} finally {
		ws.close();
	}
}

// A message stored by one side, read back by `mid` on the other.
async function backlog(subPort, pubPort) {
	const c = newId();
	const text = `{"stored":"${c}"}`;
	const p = await publishText(pubPort, [c], text, 600);
	assert(p.status === 200, `publish answered ${p.status}`);
	const r = await longPoll(subPort, c, OLD_MID);
	const got = frames(r.body.toString());
	assert(r.status === 200 && got.length === 1 && JSON.stringify(got[0].text) === text, `got ${r.status} ${r.body}`);
	return got[0].mid;
}

// Free loopback ports below the ephemeral range (32768+), which the checks' own client
// connections use: a port taken from it could be in TIME_WAIT by the next start.
function freePorts(n) {
	const net = require("net");
	const tryPort = p => new Promise(resolve => {
		const s = net.createServer().once("error", () => resolve(false));
		s.listen(p, "127.0.0.1", () => s.close(() => resolve(true)));
	});
	return (async () => {
		const ports = [];
		while (ports.length < n) {
			const p = 20000 + Math.floor(Math.random() * 12000);
			if (!ports.includes(p) && await tryPort(p)) {
				ports.push(p);
			}
		}
		return ports;
	})();
}

// A browser client (v4 WebSocket with a signed private:public pair) publishes to a public
// id; the subscriber holding that public id is on the other side.
async function clientPublish(fromPort, toPort, isOnline) {
	const [privA, pubA, privB, pubB] = [newId(), newId(), newId(), newId()];
	const pair = (p, q) => `${p}:${q}.${sign(`${p}:${q}`)}`;
	const sender = new Ws(fromPort, `CHANNEL_ID=${pair(privA, pubA)}&binaryMode=true`);
	const receiver = new Ws(toPort, `CHANNEL_ID=${pair(privB, pubB)}`);
	try {
		await Promise.all([sender.open, receiver.open]);
		await waitFor("the receiver to count online", () => isOnline(privB));
		const text = `{"client":"${pubB}"}`;
		sender.ws.send(v4Batch([{ pub: pubB }], text, 60));
		await waitFor("the client's message", async () => receiver.v3().some(f => JSON.stringify(f.text) === text));
		assert(sender.closed === null, `the sender was closed with ${sender.closed}`);
	} finally {
		sender.close();
		receiver.close();
	}
}

// One binary publish of 100 messages through `pubPort`, all to one WebSocket on `subPort`.
async function batch100(subPort, pubPort, isOnline) {
	const c = newId();
	const ws = new Ws(subPort, `CHANNEL_ID=${signed(c)}&binaryMode=true`);
	try {
		await ws.open;
		await waitFor("online", () => isOnline(c));
		const p = await request(pubPort, "POST", "/bitrix/pub/?binaryMode=true", v4Batch([c], `{"n":"${c}"}`, 60, 100));
		assert(p.status === 200, `publish answered ${p.status}`);
		await waitFor("100 messages", async () => ws.v4().length >= 100);
		await sleep(500);
		const got = ws.v4();
		const mids = got.map(m => m.mid);
		assert(got.length === 100 && [...mids].sort().join() === mids.join(), `${got.length} messages`);
		assert(got.every((m, i) => JSON.parse(m.body).i === i), "bodies out of order");
	} finally {
		ws.close();
	}
}

async function main() {
	[NODE_WS, NODE_LP, NODE_PUB] = await freePorts(3);
	assert(fs.existsSync(path.join(NODE_DIR, "server.js")), `${NODE_DIR} has no server.js`);
	start("redis", "redis-server", ["--port", "0", "--unixsocket", REDIS_SOCK, "--save", "", "--appendonly", "no"]);
	await waitFor("redis", async () => redis("PING").trim() === "PONG");
	if (process.env.REDIS_MONITOR) {
		// Every command either side sends, for a reader who wants the exact key list.
		start("monitor", "sh", ["-c", `exec redis-cli -s ${REDIS_SOCK} MONITOR > ${process.env.REDIS_MONITOR}`]);
		await sleep(200);
	}

	await startNode("sub");
	await startNode("pub");
	await startRust();

	const onNode = c => online(NODE_PUB, c);
	const onRust = c => online(RUST_PUB, c);
	const mids = [];
	const run = async (name, fn) => check(name, async () => {
		const mid = await fn();
		mids.push(mid);
		return mid;
	});

	await run("node LP <- node pub", () => liveLongPoll(NODE_LP, NODE_PUB, onNode));
	await run("node LP <- push-server pub", () => liveLongPoll(NODE_LP, RUST_PUB, onNode));
	await run("push-server LP <- node pub", () => liveLongPoll(RUST_SUB, NODE_PUB, onRust));
	await run("node v3 WS <- push-server pub", () => liveWs(NODE_WS, RUST_PUB, onNode, false));
	await run("push-server v3 WS <- node pub", () => liveWs(RUST_SUB, NODE_PUB, onRust, false));
	await run("node v4 WS <- node v4 binary pub", () => liveWs(NODE_WS, NODE_PUB, onNode, true));
	await run("node v4 WS <- push-server v4 binary pub", () => liveWs(NODE_WS, RUST_PUB, onNode, true));
	await run("push-server v4 WS <- node v4 binary pub", () => liveWs(RUST_SUB, NODE_PUB, onRust, true));
	await run("node reads push-server's backlog by mid", () => backlog(NODE_LP, RUST_PUB));
	await run("push-server reads node's backlog by mid", () => backlog(RUST_SUB, NODE_PUB));
	await check("node v4 client publish -> push-server public subscriber", () => clientPublish(NODE_WS, RUST_SUB, onRust));
	await check("push-server v4 client publish -> node public subscriber", () => clientPublish(RUST_SUB, NODE_WS, onNode));
	await check("node v4 WS <- push-server 100-message batch", () => batch100(NODE_WS, RUST_PUB, onNode));
	await check("push-server v4 WS <- node 100-message batch", () => batch100(RUST_SUB, NODE_PUB, onRust));
	await check("online: each side sees the other's subscribers", async () => {
		const a = newId(), b = newId();
		const wa = new Ws(NODE_WS, `CHANNEL_ID=${signed(a)}`), wb = new Ws(RUST_SUB, `CHANNEL_ID=${signed(b)}`);
		try {
			await Promise.all([wa.open, wb.open]);
			await waitFor("push-server to see node's channel", () => onRust(a));
			await waitFor("node to see push-server's channel", () => onNode(b));
		} finally {
			wa.close();
			wb.close();
		}
	});
	await check("ids increase across both sides", async () => {
		const sorted = [...mids].sort();
		assert(mids.every(m => /^[0-9]{26}$/.test(m)), `not all mids: ${mids}`);
		assert(new Set(mids).size === mids.length && sorted.join() === mids.join(), `order ${mids.join(" ")}`);
		return `${mids.length} ids`;
	});

	await check("v5 on push-server: user publish, last seen, status watch, channel publish to node", async () => {
		const watcher = new Ws(RUST_SUB, v5Query(1));
		await watcher.open;
		watcher.ws.send(JSON.stringify({ jsonrpc: "2.0", method: "subscribeStatusChange", params: { userId: 2 }, id: 1 }));
		const two = new Ws(RUST_SUB, v5Query(2));
		try {
			await two.open;
			await waitFor("userStatusChange online", async () => watcher.v5().some(m =>
				m.method === "incoming.message" && m.params.body.command === "userStatusChange" && m.params.body.params.online));
			const seen = await backend({ jsonrpc: "2.0", method: "getUsersLastSeen", params: { userList: [2, 3] } });
			assert(seen.result["2"] === 0, `getUsersLastSeen ${JSON.stringify(seen)}`);
			const now = Math.floor(Date.now() / 1000);
			await backend({ jsonrpc: "2.0", method: "updateUsersLastSeen", params: { 3: now - 300 } });
			const again = await backend({ jsonrpc: "2.0", method: "getUsersLastSeen", params: { userList: [3] } });
			assert(again.result["3"] >= 300 && again.result["3"] < 310, `after update ${JSON.stringify(again)}`);
			const pub = await backend([{ jsonrpc: "2.0", method: "publish",
				params: { userList: [2], body: { module_id: "im", command: "x", params: { n: 1 } }, user_params: { 2: { u: 2 } } } }]);
			assert(!pub[0].error, `publish ${JSON.stringify(pub)}`);
			await waitFor("the user message", async () => two.v5().some(m => m.method === "incoming.message" && m.params.body.params.u === 2));
			// A v5 publish to a channel reaches a Node v3 subscriber of it.
			const c = newId();
			const ws = new Ws(NODE_WS, `CHANNEL_ID=${signed(c)}`);
			try {
				await ws.open;
				await waitFor("online", () => onNode(c));
				const r = await backend([{ jsonrpc: "2.0", method: "publish",
					params: { channelList: [c], body: { module_id: "im", command: "y", params: { c } } } }]);
				assert(!r[0].error, `publish ${JSON.stringify(r)}`);
				await waitFor("the channel message on node", async () => ws.v3().some(f => f.text.params && f.text.params.c === c));
			} finally {
				ws.close();
			}
		} finally {
			watcher.close();
			two.close();
		}
	});

	await check("server-stat on both sides lists all four processes", async () => {
		const names = async port => {
			const r = await request(port, "GET", "/server-stat/");
			assert(r.status === 200, `${port} answered ${r.status}`);
			return JSON.parse(r.body.toString()).map(e => e.processUniqueId);
		};
		// Node writes its entry at start and every 60 s, push-server every 60 s and at start.
		const want = ["node-sub", "node-pub"];
		const rust = await waitFor("push-server's list", async () => {
			const n = await names(RUST_PUB);
			return want.every(w => n.includes(w)) && n.length >= 3 ? n : null;
		});
		const node = await waitFor("node's list", async () => {
			const n = await names(NODE_PUB);
			return n.length >= 3 ? n : null;
		});
		return `push-server: ${rust.length}, node: ${node.length}`;
	});

	await check("a new push-server epoch does not make node repeat ids", async () => {
		const before = await liveLongPoll(NODE_LP, NODE_PUB, onNode);
		const epoch = before.slice(0, 10);
		// push-server starts a new epoch when Redis holds an older one than it has seen (its
		// state file from an earlier run); moving the start date back one second does that.
		redis("SET", "server:startdate", String(Number(epoch) - 1));
		const rust = await liveLongPoll(NODE_LP, RUST_PUB, onNode);
		assert(rust.slice(0, 10) > epoch, `push-server kept the epoch: ${rust}`);
		// Node keeps its cached epoch; its next id must still be a new one. (Until the Node
		// processes restart, push-server's subscribers skip them: they sort below.)
		const after = await liveLongPoll(NODE_LP, NODE_PUB, onNode);
		assert(after.slice(0, 10) === epoch && after > before && !mids.includes(after), `node minted ${after} again`);
		return `node ${before} then ${after}, push-server ${rust}`;
	});

	await check("restart of push-server: node subscribers keep working", async () => {
		const c = newId();
		const ws = new Ws(NODE_WS, `CHANNEL_ID=${signed(c)}`);
		try {
			await ws.open;
			await stop("push-server");
			await startRust();
			await waitFor("online", () => onNode(c));
			await publishText(NODE_PUB, [c], `{"a":1}`);
			await publishText(RUST_PUB, [c], `{"a":2}`);
			await waitFor("both messages", async () => ws.v3().length === 2);
			assert(ws.closed === null, "node closed the socket");
		} finally {
			ws.close();
		}
	});

	await check("restart of node sub and pub: push-server subscribers keep working", async () => {
		const c = newId();
		const ws = new Ws(RUST_SUB, `CHANNEL_ID=${signed(c)}`);
		try {
			await ws.open;
			await stop("node-sub");
			await stop("node-pub");
			await startNode("sub");
			await startNode("pub");
			await publishText(NODE_PUB, [c], `{"b":1}`);
			await publishText(RUST_PUB, [c], `{"b":2}`);
			await waitFor("both messages", async () => ws.v3().length === 2);
			assert(ws.closed === null, "push-server closed the socket");
		} finally {
			ws.close();
		}
		// And node's own path still works after its restart.
		await liveLongPoll(NODE_LP, NODE_PUB, onNode);
		await liveLongPoll(NODE_LP, RUST_PUB, onNode);
	});

	await sleep(1000);
	await check("node processes alive", async () => {
		assert(alive("node-sub") && alive("node-pub"), "a node process exited");
	});
	await check("node logged no errors", async () => {
		const lines = nodeErrors();
		assert(lines.length === 0, lines.slice(0, 5).join(" | "));
	});
	await check("push-server alive, logged no errors", async () => {
		assert(alive("push-server"), "push-server exited");
		const log = fs.readFileSync(path.join(RUN, "push-server.log"), "utf8");
		const bad = log.split("\n").filter(l => /\b(ERROR|WARN)\b/.test(l));
		assert(bad.length === 0, bad.slice(0, 3).join(" | "));
	});

	if (process.env.SHOW_KEYS) {
		console.log(redis("--no-raw", "KEYS", "*"));
		console.log(redis("PUBSUB", "CHANNELS"));
	}
}

main()
	.catch(e => report("setup", false, e.message))
	.finally(() => {
		console.log(failures ? `${failures} check(s) failed; logs in ${RUN}` : "all checks passed");
		if (failures) {
			process.env.KEEP_RUN = "1";
		}
		process.exit(failures ? 1 : 0);
	});

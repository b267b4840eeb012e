// A ChatKit backend built on the npm `chatkit-node-backend-sdk`, served by Node's own `http` server.
//     node tests/support/node/chatkit_sdk_server.mjs PORT
//
// POST /chatkit     the ChatKit endpoint: an echo responder over an in-memory store. It answers
//                   "echo: TEXT" in three text deltas; to "whoami" it answers what reached it of the
//                   caller (the body's `metadata`, `X-User-Id`, `X-Request-Id`) as JSON.
// GET  /gates/NAME  where the stream of the request whose body's `metadata.gate` is NAME stands:
//                   "waiting" (held after its first delta), "released", "finished" (answer ended)
//                   or "closed" (the connection closed before the answer ended).
// POST /gates/NAME/release   lets that stream go on.
// GET  /ready       200 once listening.
//
// Replies are a function of the request alone, so that one request sent directly and through the
// gateway gets the same bytes: ids come from the first message's text and a per-request counter,
// and the clock is fixed (the SDK stamps `created_at` with `new Date()`, and has no clock hook).
import http from "node:http";
import { createHash } from "node:crypto";
import { ChatKitServer, Store, StoreNotFoundError } from "chatkit-node-backend-sdk";

const FIXED_NOW = Date.parse("2026-01-01T00:00:00.000Z");
const RealDate = Date;
globalThis.Date = class FixedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(FIXED_NOW);
    else super(...args);
  }
  static now() {
    return FIXED_NOW;
  }
};

const ITEM_PREFIX = { message: "msg", tool_call: "tc", task: "task", workflow: "wf", attachment: "atc" };

function inputText(content) {
  return (content || []).filter((part) => part.type === "input_text").map((part) => part.text).join("");
}

function page(rows, after, limit, order) {
  const ordered = order === "desc" ? [...rows].reverse() : rows;
  const start = after === null ? 0 : ordered.findIndex((row) => row.id === after) + 1;
  const data = ordered.slice(start, start + limit);
  const hasMore = start + limit < ordered.length;
  return { data, has_more: hasMore, after: hasMore ? data[data.length - 1].id : null };
}

class MemoryStore extends Store {
  threads = new Map(); // id -> ThreadMetadata, in creation order
  items = new Map(); // thread id -> ThreadItem[], in order of arrival

  generateThreadId(context) {
    return "thr_" + createHash("sha256").update(context.firstText).digest("hex").slice(0, 16);
  }

  generateItemId(type, thread, context) {
    context.itemCount += 1;
    return `${ITEM_PREFIX[type] || type}_${thread.id.slice(4)}_${context.itemCount}`;
  }

  async loadThread(threadId) {
    const thread = this.threads.get(threadId);
    if (!thread) throw new StoreNotFoundError(`Thread ${threadId} not found`);
    return { ...thread };
  }

  async saveThread(thread) {
    this.threads.set(thread.id, { ...thread });
    if (!this.items.has(thread.id)) this.items.set(thread.id, []);
  }

  async deleteThread(threadId) {
    this.threads.delete(threadId);
    this.items.delete(threadId);
  }

  async loadThreads(limit, after, order) {
    return page([...this.threads.values()], after, limit, order);
  }

  async loadThreadItems(threadId, after, limit, order) {
    return page(this.items.get(threadId) || [], after, limit, order);
  }

  async addThreadItem(threadId, item) {
    await this.saveItem(threadId, item);
  }

  async saveItem(threadId, item) {
    // An item already stored under this id is replaced: the same request twice stores it once.
    const items = this.items.get(threadId) || [];
    const index = items.findIndex((stored) => stored.id === item.id);
    if (index === -1) items.push(item);
    else items[index] = item;
    this.items.set(threadId, items);
  }

  async loadItem(threadId, itemId) {
    const item = (this.items.get(threadId) || []).find((stored) => stored.id === itemId);
    if (!item) throw new StoreNotFoundError(`Item ${itemId} not found`);
    return item;
  }

  async deleteThreadItem(threadId, itemId) {
    this.items.set(threadId, (this.items.get(threadId) || []).filter((stored) => stored.id !== itemId));
  }

  async saveAttachment() {
    throw new Error("attachments are not supported");
  }

  async loadAttachment(attachmentId) {
    throw new StoreNotFoundError(`Attachment ${attachmentId} not found`);
  }

  async deleteAttachment() {}
}

// Streams held at their gate: name -> { state, release }.
const gates = new Map();

function holdAt(name) {
  return new Promise((resolve) => gates.set(name, { state: "waiting", release: resolve }));
}

function setGate(name, state) {
  const gate = gates.get(name);
  if (name === undefined || gate === undefined) return;
  if (state !== "released" || gate.state === "waiting") gate.state = state;
  gate.release();
}

class EchoServer extends ChatKitServer {
  async *respond(thread, input, context) {
    if (input === null) return;
    const text = inputText(input.content);
    const reply =
      text === "whoami"
        ? JSON.stringify({ metadata: context.metadata, userId: context.userId, requestId: context.requestId })
        : `echo: ${text}`;
    const id = this.store.generateItemId("message", thread, context);
    const base = { type: "assistant_message", id, thread_id: thread.id, created_at: new Date().toISOString() };
    yield { type: "thread.item.added", item: { ...base, content: [{ type: "output_text", text: "", annotations: [] }] } };
    const third = Math.ceil(reply.length / 3);
    for (let start = 0; start < reply.length; start += third) {
      const delta = reply.slice(start, start + third);
      const update = { type: "assistant_message.content_part.text_delta", content_index: 0, delta };
      yield { type: "thread.item.updated", item_id: id, update };
      if (start === 0 && typeof context.gate === "string") await holdAt(context.gate);
    }
    yield { type: "thread.item.done", item: { ...base, content: [{ type: "output_text", text: reply, annotations: [] }] } };
  }
}

const quiet = { debug() {}, info() {}, warn: console.warn, error: console.error };
const chatkit = new EchoServer(new MemoryStore(), undefined, quiet);

function sendJson(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

async function serveChatKit(req, res, body) {
  let request;
  try {
    request = JSON.parse(body.toString("utf-8"));
  } catch {
    sendJson(res, 400, { error: "invalid JSON" });
    return;
  }
  // The SDK hands this context to the store and the responder; what the gateway wrote into the
  // body's `metadata` reaches them only through it (the SDK itself ignores `metadata`).
  const metadata = request.metadata && typeof request.metadata === "object" ? request.metadata : {};
  const context = {
    metadata,
    userId: req.headers["x-user-id"] ?? null,
    requestId: req.headers["x-request-id"] ?? null,
    gate: metadata.gate,
    firstText: inputText(request.params?.input?.content),
    itemCount: 0,
  };
  let result;
  try {
    result = await chatkit.process(body, context);
  } catch (error) {
    sendJson(res, error instanceof StoreNotFoundError ? 404 : 500, { error: String(error.message) });
    return;
  }
  if (!result.isStreaming) {
    const answer = result.toString();
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(answer) });
    res.end(answer);
    return;
  }
  res.on("close", () => setGate(context.gate, res.writableFinished ? "finished" : "closed"));
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  for await (const chunk of result) {
    if (res.destroyed) break; // leaving the loop ends the SDK's generator
    res.write(chunk);
  }
  res.end();
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const gate = /^\/gates\/([\w-]+)(\/release)?$/.exec(req.url);
    if (req.method === "POST" && req.url === "/chatkit") {
      serveChatKit(req, res, Buffer.concat(chunks)).catch((error) => {
        console.error(error);
        res.destroy();
      });
    } else if (req.method === "GET" && req.url === "/ready") {
      sendJson(res, 200, { ready: true });
    } else if (gate && req.method === "POST" && gate[2]) {
      setGate(gate[1], "released");
      sendJson(res, gates.has(gate[1]) ? 200 : 404, { state: gates.get(gate[1])?.state ?? null });
    } else if (gate && req.method === "GET" && !gate[2]) {
      sendJson(res, 200, { state: gates.get(gate[1])?.state ?? null });
    } else {
      sendJson(res, 404, { error: "not found" });
    }
  });
});
server.listen(Number(process.argv[2]), "127.0.0.1");

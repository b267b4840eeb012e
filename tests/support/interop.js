// The conformance backend (tests/support/interop.py) on Node's own `http` server.
//     node tests/support/interop.js PORT
"use strict";
const http = require("http");
const zlib = require("zlib");

const EVENTS = [0, 1, 2].map((i) => `data: {"type":"progress_update","text":"${i}"}\n\n`);
const GZIP_EVENTS = zlib.gzipSync(Buffer.from(EVENTS.join("")));
const REFUSED = '{"error":"too large"}';

const server = http.createServer((req, res) => {
  if (req.url === "/upload-refused") {
    res.writeHead(413, { "content-type": "application/json", "content-length": REFUSED.length, connection: "close" });
    res.end(REFUSED);
    return;
  }
  let received = 0;
  req.on("data", (chunk) => { received += chunk.length; });
  req.on("end", () => {
    if (req.url === "/json" || req.url === "/ready") {
      const body = JSON.stringify({ received: received });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    } else if (req.url === "/sse") {
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const event of EVENTS) res.write(event);
      res.end();
    } else if (req.url === "/sse-gzip") {
      res.writeHead(200, { "content-type": "text/event-stream", "content-encoding": "gzip" });
      res.end(GZIP_EVENTS);
    } else {
      res.writeHead(404, { "content-length": 0 });
      res.end();
    }
  });
});
server.listen(Number(process.argv[2]), "127.0.0.1");

/**
 * A loopback stand-in for the IPFS pinning service (Pinata's API) and gateway, which the SDK's
 * ipfs.pin() / retrieve() talk to. Hashes are CIDv0 strings (base58 of 0x12 0x20 + sha256).
 *
 *   node test/fake-ipfs.js --port 0     prints "listening <port>" on stdout
 */
import crypto from 'node:crypto';
import http from 'node:http';
import { pathToFileURL } from 'node:url';
import { base58 } from '../src/util.js';

export function createFakeIpfs() {
  /** @type {Map<string, string>} */
  const store = new Map();
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks).toString('utf8');
    if (req.method === 'POST' && req.url === '/pinning/pinJSONToIPFS') {
      const digest = crypto.createHash('sha256').update(body).digest();
      const hash = base58(Buffer.concat([Buffer.from([0x12, 0x20]), digest]));
      store.set(hash, body);
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ IpfsHash: hash, PinSize: body.length, Timestamp: new Date().toISOString() }));
    }
    const m = /^\/ipfs\/([1-9A-HJ-NP-Za-km-z]+)$/.exec(req.url ?? '');
    if (req.method === 'GET' && m && store.has(m[1])) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(store.get(m[1]));
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":"not found"}');
  });
  return { server, store };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf('--port');
  const port = i > 0 ? Number(process.argv[i + 1]) : 0;
  const { server } = createFakeIpfs();
  server.listen(port, '127.0.0.1', () => {
    const addr = server.address();
    console.log(`listening ${typeof addr === 'object' && addr ? addr.port : port}`);
  });
  process.on('SIGTERM', () => process.exit(0));
}

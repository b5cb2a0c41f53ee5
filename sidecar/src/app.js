/** The HTTP API on node:http. Everything but GET /health needs X-Internal-API-Key. */
import crypto from 'node:crypto';
import http from 'node:http';
import { ChainError, classify } from './errors.js';
import { BadRequest, parseExtend, parseLaunch } from './validate.js';

const MAX_BODY = 1024 * 1024;
const STATUS_OF = { insufficient_funds: 402, not_found: 404, permanent: 409, transient: 503 };

class HttpError extends Error {
  /** @param {number} status @param {string} code @param {string} message @param {object} [extra] */
  constructor(status, code, message, extra = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.extra = extra;
  }
}

/** @param {string} given @param {string} expected */
function sameSecret(given, expected) {
  const a = crypto.createHash('sha256').update(given).digest();
  const b = crypto.createHash('sha256').update(expected).digest();
  return crypto.timingSafeEqual(a, b);
}

/** @param {http.IncomingMessage} req @returns {Promise<any>} */
async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new HttpError(413, 'too_large', 'body: larger than 1 MiB');
    chunks.push(chunk);
  }
  if (!size) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new BadRequest('body', 'malformed JSON');
  }
}

/**
 * @param {{cfg: import('./config.js').Config, watcher: import('./watcher.js').Watcher, chain: any}} deps
 */
export function createServer({ cfg, watcher, chain }) {
  /** @type {Array<[string, RegExp, (m: RegExpMatchArray, req: http.IncomingMessage) => Promise<[number, any]>]>} */
  const routes = [];
  const route = (method, pattern, fn) => routes.push([method, new RegExp(`^${pattern}$`), fn]);
  const secrets = [cfg.apiKey, cfg.wallet ?? ''];

  const entryOr404 = (id) => {
    const e = watcher.find(id);
    if (!e) throw new HttpError(404, 'not_found', `no job or node ${id}`);
    return e;
  };

  route('GET', '/health', async () => [200, { status: 'ok', simulated: Boolean(chain.simulated), jobs: watcher.entries.size }]);

  route('POST', '/jobs/launch', async (_m, req) => {
    const body = parseLaunch(await readBody(req), { secrets });
    const { entry, created } = await watcher.launch(body);
    return [created ? 201 : 200, { job_id: entry.job_id, ipfs_hash: entry.ipfs_hash, state: entry.state, node_id: entry.node_id, created }];
  });

  route('GET', '/jobs', async (_m, req) => {
    const q = new URL(req.url ?? '/', 'http://x').searchParams;
    const active = q.get('active') === '1' || q.get('active') === 'true';
    const jobs = [...watcher.entries.values()]
      .filter((e) => !q.get('node_id') || e.node_id === q.get('node_id'))
      .filter((e) => !q.get('pool_id') || e.pool_id === q.get('pool_id'))
      .filter((e) => !active || !['stopped', 'failed', 'insufficient_funds'].includes(e.state))
      .map((e) => watcher.view(e));
    return [200, { jobs }];
  });

  route('GET', '/jobs/([^/]+)', async (m) => [200, watcher.view(entryOr404(decodeURIComponent(m[1])))]);

  route('POST', '/jobs/([^/]+)/stop', async (m) => {
    const e = await watcher.stop(decodeURIComponent(m[1]));
    if (!e) throw new HttpError(404, 'not_found', `no job or node ${m[1]}`);
    return [e.state === 'stopped' ? 200 : 202, watcher.view(e)];
  });

  route('POST', '/jobs/([^/]+)/extend', async (m, req) => {
    const seconds = parseExtend(await readBody(req));
    const e = await watcher.extend(decodeURIComponent(m[1]), seconds);
    if (!e) throw new HttpError(404, 'not_found', `no job or node ${m[1]}`);
    return [200, watcher.view(e)];
  });

  route('GET', '/jobs/([^/]+)/logs', async (m, req) => {
    const e = entryOr404(decodeURIComponent(m[1]));
    const tail = Math.min(Math.max(Number(new URL(req.url ?? '/', 'http://x').searchParams.get('tail')) || 100, 1), 5000);
    let job = [];
    if (e.job_id) job = await chain.logs(e.job_id).catch((err) => [`(job logs unavailable: ${classify(err).message})`]);
    return [200, { node_id: e.node_id, job_id: e.job_id, lines: [...(e.events ?? []).map((l) => `[sidecar] ${l}`), ...job].slice(-tail) }];
  });

  route('GET', '/markets', async () => {
    const markets = await Promise.all(cfg.markets.map(async (m) => {
      try {
        const info = await chain.market(m.address);
        const nodeQueue = info.queueType === 1;
        return {
          ...m, price_per_second: info.price, price_per_hour: (info.price * 3600) / 1e6,
          queue_type: nodeQueue ? 'nodes' : 'jobs', available_nodes: nodeQueue ? info.queueLength : 0,
          queued_jobs: nodeQueue ? 0 : info.queueLength, job_timeout_s: info.jobTimeout,
        };
      } catch (err) {
        return { ...m, error: classify(err).message };
      }
    }));
    return [200, { markets }];
  });

  if (chain.simulated) {
    route('GET', '/sim/state', async () => [200, chain.snapshot()]);
    route('POST', '/sim/clock', async (_m, req) => {
      const b = await readBody(req);
      if (typeof b.advance_s !== 'number') throw new BadRequest('advance_s', 'required: a number of seconds');
      chain.advance(b.advance_s);
      return [200, { now: chain.now() }];
    });
    route('POST', '/sim/jobs/([^/]+)/state', async (m, req) => {
      const b = await readBody(req);
      if (typeof b.state !== 'string') throw new BadRequest('state', 'required: running | completed | stopped | error');
      chain.force(decodeURIComponent(m[1]), b.state);
      return [200, chain.snapshot()];
    });
    route('POST', '/sim/balance', async (_m, req) => {
      const b = await readBody(req);
      if (typeof b.balance !== 'number') throw new BadRequest('balance', 'required: a number');
      chain.setBalance(b.balance);
      return [200, { balance: b.balance }];
    });
  }

  return http.createServer(async (req, res) => {
    const send = (status, body) => {
      const data = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
      res.end(data);
    };
    try {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      const matches = routes.filter(([, re]) => re.test(path));
      const hit = matches.find(([method]) => method === req.method);
      if (!hit) {
        if (matches.length) throw new HttpError(405, 'method_not_allowed', `${req.method} is not allowed on ${path}`);
        throw new HttpError(404, 'not_found', `no route ${path}`);
      }
      if (path !== '/health') {
        const key = req.headers['x-internal-api-key'];
        if (typeof key !== 'string' || !key) throw new HttpError(401, 'unauthorized', 'missing X-Internal-API-Key');
        if (!sameSecret(key, cfg.apiKey)) throw new HttpError(403, 'forbidden', 'wrong X-Internal-API-Key');
      }
      const [status, body] = await hit[2](/** @type {RegExpMatchArray} */ (path.match(hit[1])), req);
      send(status, body);
    } catch (err) {
      if (err instanceof BadRequest) return send(400, { error: 'invalid_request', field: err.field, message: err.message });
      if (err instanceof HttpError) return send(err.status, { error: err.code, message: err.message, ...err.extra });
      if (err instanceof ChainError) return send(STATUS_OF[err.kind] ?? 503, { error: err.kind, message: err.message });
      console.error(`internal error on ${req.method} ${req.url}: ${String(/** @type {any} */ (err)?.stack ?? err).slice(0, 500)}`);
      send(500, { error: 'internal', message: 'internal error' });
    }
  });
}

/** Test harness: the real sidecar process (simulated market), a fake IPFS and a fake orchestrator. */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createFakeIpfs } from './fake-ipfs.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const KEY = 'test-internal-key-0123456789';
export const MARKET = '97G9NnvBDQ2WpKu6fasoMsAKmfj63C9rhysJnkeWodAf';

/** @param {http.Server} server @returns {Promise<number>} */
export function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(/** @type {any} */ (server.address()).port)));
}

/** A fake orchestrator: records heartbeat batches, answers 200 (or what `statusFor` says) per item. */
export async function fakeOrchestrator() {
  const batches = [];
  const o = {
    batches,
    /** @type {(item: any) => number} */
    statusFor: () => 200,
    server: http.createServer(async (req, res) => {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      batches.push(body);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ results: body.heartbeats.map((h) => ({ node_id: h.node_id, status: o.statusFor(h) })) }));
    }),
    url: '',
    /** every heartbeat item for a node, oldest first */
    beats: (nodeId) => batches.flatMap((b) => b.heartbeats).filter((h) => h.node_id === nodeId),
  };
  o.url = `http://127.0.0.1:${await listen(o.server)}/inventory/heartbeat`;
  return o;
}

/** A stand-in for the engine a Nosana host would expose: answers /health. */
export async function fakeService() {
  const server = http.createServer((_req, res) => { res.writeHead(200); res.end('ok'); });
  return { server, url: `http://127.0.0.1:${await listen(server)}` };
}

/** The real sidecar as a child process. */
export class Sidecar {
  /** @param {Record<string, string>} env */
  constructor(env) {
    this.env = env;
    this.output = '';
  }

  async start() {
    this.proc = spawn(process.execPath, [path.join(ROOT, 'src/main.js')], {
      env: { ...process.env, ...this.env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    const seen = new Promise((resolve, reject) => {
      const onData = (d) => {
        this.output += d.toString();
        const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(this.output);
        if (m) resolve(Number(m[1]));
      };
      this.proc.stdout.on('data', onData);
      this.proc.stderr.on('data', onData);
      this.proc.on('exit', (code) => reject(new Error(`sidecar exited ${code}: ${this.output}`)));
    });
    this.port = await seen;
    this.url = `http://127.0.0.1:${this.port}`;
    return this;
  }

  /** @param {NodeJS.Signals} [signal] */
  async kill(signal = 'SIGKILL') {
    if (!this.proc || this.proc.exitCode !== null) return;
    const done = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill(signal);
    await done;
  }

  /** @param {string} method @param {string} p @param {any} [body] @param {Record<string, string>} [headers] */
  async call(method, p, body, headers = { 'x-internal-api-key': KEY }) {
    const res = await fetch(this.url + p, {
      method, headers: { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }
}

/** Everything one test needs; `env` overrides the sidecar's settings. */
export async function setup(env = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nosana-sidecar-'));
  const ipfs = createFakeIpfs();
  const ipfsPort = await listen(ipfs.server);
  const orch = await fakeOrchestrator();
  const service = await fakeService();
  const sidecarEnv = {
    NOSANA_INTERNAL_API_KEY: KEY,
    NOSANA_SIMULATE: '1',
    NOSANA_SIDECAR_PORT: '0',
    NOSANA_STATE_DIR: path.join(dir, 'state'),
    NOSANA_SIM_STATE_FILE: path.join(dir, 'chain.json'),
    NOSANA_SIM_HOST_URLS: service.url,
    NOSANA_SIM_START_DELAY_S: '0.3',
    NOSANA_IPFS_API: `http://127.0.0.1:${ipfsPort}`,
    NOSANA_IPFS_GATEWAY: `http://127.0.0.1:${ipfsPort}/ipfs/`,
    NOSANA_IPFS_JWT: 'fake-jwt',
    NOSANA_WATCH_INTERVAL_S: '0.1',
    NOSANA_HEARTBEAT_INTERVAL_S: '0.1',
    NOSANA_EXTEND_THRESHOLD_S: '60',
    NOSANA_REDEPLOY_BACKOFF_S: '0.1',
    NOSANA_MAX_REDEPLOYS: '3',
    NOSANA_MARKETS: JSON.stringify([{ address: MARKET, name: 'nvidia-3090', gpu_type: 'RTX 3090', gpu_count: 1, gpu_memory_mb: 24576 }]),
    ...env,
  };
  const sidecar = await new Sidecar(sidecarEnv).start();
  const ctx = {
    dir, ipfs, orch, service, sidecar, sidecarEnv,
    /** start another sidecar process on the same state (a restart) */
    restart: async () => {
      await ctx.sidecar.kill();
      ctx.sidecar = await new Sidecar(sidecarEnv).start();
      return ctx.sidecar;
    },
    close: async () => {
      await ctx.sidecar.kill();
      for (const s of [ipfs.server, orch.server, service.server]) s.closeAllConnections?.(), s.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return ctx;
}

export function definition(extra = {}) {
  return {
    version: '0.1',
    type: 'container',
    meta: { trigger: 'inferia' },
    ops: [{
      type: 'container/run',
      id: 'engine',
      args: {
        image: 'vllm/vllm-openai:v0.6.3',
        cmd: ['--model', 'tiny', '--port', '8000'],
        gpu: true,
        expose: [{ port: 8000, type: 'api', health_checks: [{ type: 'http', path: '/health', method: 'GET', expected_status: 200, continuous: false }] }],
        ...extra,
      },
    }],
  };
}

/** @param {any} ctx @param {string} nodeId @param {object} [over] */
export function launchBody(ctx, nodeId, over = {}) {
  return {
    node_id: nodeId, job_definition: definition(), market: MARKET, timeout_s: 3600, pool_id: 'pool-1',
    heartbeat: { url: ctx.orch.url, token: `tok-${nodeId}` }, ...over,
  };
}

/** @template T @param {() => Promise<T> | T} fn @param {string} what @param {number} [timeoutMs] @returns {Promise<T>} */
export async function waitFor(fn, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

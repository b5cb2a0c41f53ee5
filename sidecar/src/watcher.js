/**
 * One watch entry per orchestrator node. Each entry runs an explicit state machine:
 *
 *   posting -> queued -> running --(job ended, not by us)--> redeploying -> posting -> ...
 *      |          |         |                                  (after max_redeploys: failed)
 *      |          +---------+--(stop asked)--> stopping -> stopped
 *      +--(wallet cannot pay)--> insufficient_funds
 *
 * Terminal: stopped, failed (redeploys exhausted or a permanent chain error), insufficient_funds.
 * Every change is persisted before the next chain call, so a restarted sidecar resumes every entry
 * and a stop we asked for is never redeployed.
 */
import { getExposeIdHash } from '@nosana/sdk';
import { ChainError, classify } from './errors.js';

export const TERMINAL = new Set(['stopped', 'failed', 'insufficient_funds']);
const MAX_EVENTS = 200;

/** @param {any} definition @returns {{op_index: number, port: number | string, health_path: string | null} | null} */
export function exposedService(definition) {
  const ops = Array.isArray(definition?.ops) ? definition.ops : [];
  for (let i = 0; i < ops.length; i++) {
    const expose = ops[i]?.args?.expose;
    const list = Array.isArray(expose) ? expose : expose === undefined ? [] : [expose];
    for (const e of list) {
      if (typeof e === 'number') return { op_index: i, port: e, health_path: null };
      if (e && typeof e === 'object' && 'port' in e) {
        const hc = (e.health_checks ?? []).find((h) => h?.type === 'http');
        return { op_index: i, port: e.port, health_path: hc?.path ?? null };
      }
    }
  }
  return null;
}

export class Watcher {
  /**
   * @param {{cfg: import('./config.js').Config, chain: any, ipfs: {pin: (d: object) => Promise<string>},
   *   store: import('./store.js').WatchStore, log?: (msg: string) => void}} deps
   */
  constructor({ cfg, chain, ipfs, store, log }) {
    this.cfg = cfg;
    this.chain = chain;
    this.ipfs = ipfs;
    this.store = store;
    this.log = log ?? ((m) => console.log(m));
    /** @type {Map<string, any>} node_id -> entry */
    this.entries = new Map();
    /** @type {Map<string, Promise<unknown>>} */
    this.locks = new Map();
    this.timers = [];
    for (const e of store.load()) {
      // a post interrupted by a restart may have landed: look for it before posting again
      if (e.state === 'posting' && !e.job_id) e.resume_check = true;
      this.entries.set(e.node_id, e);
    }
  }

  persist() {
    this.store.save(this.entries.values());
  }

  /** Serialise work on one node. @template T @param {string} nodeId @param {() => Promise<T>} fn @returns {Promise<T>} */
  withLock(nodeId, fn) {
    const prev = this.locks.get(nodeId) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => {});
    this.locks.set(nodeId, tail);
    tail.then(() => { if (this.locks.get(nodeId) === tail) this.locks.delete(nodeId); });
    return run;
  }

  /** @param {any} e @param {string} what */
  event(e, what) {
    const line = `${new Date().toISOString()} ${what}`;
    e.events = [...(e.events ?? []), line].slice(-MAX_EVENTS);
    this.log(`node ${e.node_id}: ${what}`);
  }

  /** @param {any} e @param {string} state @param {string} [why] */
  setState(e, state, why) {
    if (e.state !== state) this.event(e, `${e.state ?? 'new'} -> ${state}${why ? ` (${why})` : ''}`);
    e.state = state;
    e.updated_at = Date.now() / 1000;
  }

  /** A job id (current or earlier) or a node id. @param {string} id */
  find(id) {
    const byNode = this.entries.get(id);
    if (byNode) return byNode;
    for (const e of this.entries.values()) if (e.job_id === id || (e.history ?? []).includes(id)) return e;
    return undefined;
  }

  // ---------------------------------------------------------------- commands
  /** Idempotent on node_id: a live entry is returned as it is. */
  async launch(body) {
    return this.withLock(body.node_id, async () => {
      const existing = this.entries.get(body.node_id);
      if (existing && !TERMINAL.has(existing.state)) {
        existing.heartbeat = body.heartbeat;
        this.persist();
        return { entry: existing, created: false };
      }
      const service = exposedService(body.job_definition);
      const now = Date.now() / 1000;
      const e = {
        node_id: body.node_id, pool_id: body.pool_id ?? null, market: body.market, timeout_s: body.timeout_s,
        heartbeat: body.heartbeat, service, health_path: body.health_path ?? service?.health_path ?? null,
        ipfs_hash: null, job_id: null, previous_job_id: null, history: [], attempts: 0, stop_requested: false,
        state: 'posting', url: null, node_host: null, price: null, time_start: null, time_end: null,
        job_timeout_s: null, last_end: null, last_error: null, next_attempt_at: null, created_at: now, updated_at: now,
        events: [],
      };
      this.event(e, 'launch requested');
      try {
        e.ipfs_hash = await this.ipfs.pin(body.job_definition);
      } catch (err) {
        throw new ChainError('transient', `could not pin the job definition to IPFS: ${String(err?.message ?? err).slice(0, 200)}`);
      }
      this.event(e, `definition pinned as ${e.ipfs_hash}`);
      this.entries.set(e.node_id, e);
      this.persist();
      await this.post(e);
      return { entry: e, created: true };
    });
  }

  /** Post (or find the job a crashed earlier try posted). Caller holds the lock. @param {any} e */
  async post(e) {
    try {
      const exclude = new Set(e.history);
      let jobId = e.resume_check ? await this.chain.findByIpfsHash(e.ipfs_hash, exclude) : null;
      if (jobId && exclude.has(jobId)) jobId = null;
      if (jobId) this.event(e, `found job ${jobId} posted before a restart`);
      else jobId = (await this.chain.post(e.ipfs_hash, e.timeout_s, e.market)).jobId;
      e.job_id = jobId;
      e.resume_check = false;
      e.last_error = null;
      e.next_attempt_at = null;
      this.setState(e, 'queued', `job ${jobId} posted to market ${e.market}`);
      this.persist();
    } catch (err) {
      const c = classify(err);
      e.last_error = c.message;
      if (c.kind === 'insufficient_funds') this.setState(e, 'insufficient_funds', c.message);
      else if (c.kind === 'permanent') this.setState(e, 'failed', c.message);
      else {
        e.resume_check = true; // the transaction may have landed: look before posting again
        e.next_attempt_at = Date.now() / 1000 + this.backoff(e.attempts);
      }
      this.persist();
      throw c;
    }
  }

  /** @param {number} attempt */
  backoff(attempt) {
    return Math.min(this.cfg.redeployBackoffS * 2 ** Math.max(0, attempt - 1), this.cfg.redeployBackoffMaxS);
  }

  async stop(id) {
    const found = this.find(id);
    if (!found) return undefined;
    return this.withLock(found.node_id, async () => {
      const e = found;
      if (TERMINAL.has(e.state) && e.state !== 'failed') return e;
      e.stop_requested = true; // persisted before any chain call: never redeployed from here on
      this.persist();
      if (!e.job_id || e.state === 'redeploying' || e.state === 'posting' || e.state === 'failed') {
        this.setState(e, 'stopped', 'stop requested');
        if (e.job_id) await this.stopOnChain(e).catch(() => {});
        this.persist();
        return e;
      }
      this.setState(e, 'stopping', 'stop requested');
      this.persist();
      await this.stopOnChain(e).catch((err) => { e.last_error = classify(err).message; });
      this.persist();
      return e;
    });
  }

  /** @param {any} e */
  async stopOnChain(e) {
    await this.chain.stop(e.job_id);
    const j = await this.chain.get(e.job_id);
    if (j.state === 'STOPPED' || j.state === 'COMPLETED') {
      e.time_end = j.timeEnd || null;
      this.setState(e, 'stopped', `job ${e.job_id} ${j.state.toLowerCase()}`);
    }
  }

  async extend(id, seconds) {
    const e = this.find(id);
    if (!e) return undefined;
    return this.withLock(e.node_id, async () => {
      if (!e.job_id || TERMINAL.has(e.state) || e.state === 'stopping') {
        throw new ChainError('permanent', `job is ${e.state}: only a queued or running job can be extended`);
      }
      await this.chain.extend(e.job_id, seconds);
      this.event(e, `extended job ${e.job_id} by ${seconds}s`);
      this.persist();
      return e;
    });
  }

  // ---------------------------------------------------------------- watch loop
  async tick() {
    await Promise.all([...this.entries.values()].map((e) => this.withLock(e.node_id, () => this.step(e)).catch((err) => {
      e.last_error = classify(err).message;
    })));
  }

  /** One step of one entry's state machine. Caller holds the lock. @param {any} e */
  async step(e) {
    const now = Date.now() / 1000;
    if (TERMINAL.has(e.state)) {
      if (now - e.updated_at > this.cfg.retainS) {
        this.entries.delete(e.node_id);
        this.persist();
      }
      return;
    }
    if (e.state === 'stopping') return this.stopOnChain(e).finally(() => this.persist());
    if (e.state === 'posting' || e.state === 'redeploying') {
      if (e.next_attempt_at && now < e.next_attempt_at) return;
      if (e.state === 'redeploying') {
        e.attempts += 1;
        this.setState(e, 'posting', `redeploy attempt ${e.attempts} of ${this.cfg.maxRedeploys}`);
        this.persist();
      }
      return this.post(e);
    }
    // queued | running: ask the chain
    const j = await this.chain.get(e.job_id);
    e.price = j.price;
    e.job_timeout_s = j.timeout;
    if (j.state === 'QUEUED') return this.setState(e, 'queued');
    if (j.state === 'RUNNING') {
      const first = e.state !== 'running';
      e.node_host = j.node;
      e.time_start = j.timeStart;
      e.url = this.serviceUrl(e);
      if (first) {
        this.setState(e, 'running', `on host ${j.node}`);
        this.persist();
      }
      await this.maybeExtend(e, j);
      await this.probe(e);
      return;
    }
    // the job ended on its own: completed, timed out, stopped by its host, or failed
    e.time_end = j.timeEnd || null;
    e.ready = false;
    if (e.stop_requested) {
      this.setState(e, 'stopped', `job ${e.job_id} ${j.state.toLowerCase()}`);
      return this.persist();
    }
    e.last_end = j.failed ? 'error' : j.state === 'STOPPED' ? 'stopped_by_host' : 'completed';
    if (e.attempts >= this.cfg.maxRedeploys) {
      this.setState(e, 'failed', `job ${e.job_id} ended (${e.last_end}) and ${e.attempts} redeploys are used up`);
      return this.persist();
    }
    e.previous_job_id = e.job_id;
    e.history = [...e.history, e.job_id];
    e.url = null;
    e.next_attempt_at = now + this.backoff(e.attempts + 1);
    this.setState(e, 'redeploying', `job ${e.job_id} ended unexpectedly (${e.last_end})`);
    this.persist();
  }

  /** @param {any} e @param {any} j */
  async maybeExtend(e, j) {
    const remaining = j.timeStart + j.timeout - this.chain.now();
    if (remaining >= this.cfg.extendThresholdS) return;
    const by = this.cfg.extendByS || e.timeout_s;
    try {
      await this.chain.extend(e.job_id, by);
      this.event(e, `auto-extended job ${e.job_id} by ${by}s (${Math.max(0, Math.round(remaining))}s were left)`);
      this.persist();
    } catch (err) {
      e.last_error = `auto-extend failed: ${classify(err).message}`;
      this.event(e, e.last_error);
    }
  }

  /** @param {any} e */
  serviceUrl(e) {
    const simulated = this.chain.serviceUrl(e.job_id);
    if (simulated) return simulated;
    if (!e.service) return null;
    const hash = getExposeIdHash(e.job_id, e.service.op_index, e.service.port);
    return this.cfg.serviceUrlTemplate.replace('{hash}', hash).replace('{job}', e.job_id);
  }

  /** Ready = the public URL answers its health path. @param {any} e */
  async probe(e) {
    if (!e.url) { e.ready = false; return; }
    try {
      const res = await fetch(e.url.replace(/\/$/, '') + (e.health_path ?? '/'), {
        signal: AbortSignal.timeout(this.cfg.probeTimeoutS * 1000),
      });
      e.ready = res.status < 400;
      e.probe_error = e.ready ? null : `health check answered ${res.status}`;
      await res.body?.cancel();
    } catch (err) {
      e.ready = false;
      e.probe_error = `health check failed: ${String(err?.message ?? err).slice(0, 120)}`;
    }
  }

  // ---------------------------------------------------------------- heartbeats
  /** @param {any} e */
  beat(e) {
    const item = { node_id: e.node_id, token: e.heartbeat.token, provider: 'nosana' };
    if (e.job_id && e.state !== 'redeploying') item.provider_instance_id = e.job_id;
    if (e.previous_job_id && item.provider_instance_id) item.previous_provider_instance_id = e.previous_job_id;
    if (e.state === 'running' && e.ready) {
      return { ...item, state: 'ready', health_score: 100, endpoint: e.url };
    }
    if (TERMINAL.has(e.state)) return { ...item, state: 'failed', health_score: 0, reason: `nosana: ${e.state}: ${e.last_error ?? e.last_end ?? ''}`.slice(0, 900) };
    const why = e.state === 'running' ? e.probe_error ?? 'waiting for the service' : e.state === 'redeploying' ? `redeploying after the job ${e.last_end}` : e.state;
    return { ...item, state: 'starting', health_score: 50, ...(e.url ? { endpoint: e.url } : {}), reason: `nosana: ${why}`.slice(0, 900) };
  }

  /** Send one batch per orchestrator URL with every entry that should be reported. */
  async heartbeatOnce() {
    /** @type {Map<string, any[]>} */
    const byUrl = new Map();
    for (const e of this.entries.values()) {
      if (!e.heartbeat || e.hb_gone || e.state === 'stopped' || e.state === 'stopping') continue;
      const list = byUrl.get(e.heartbeat.url) ?? [];
      list.push(e);
      byUrl.set(e.heartbeat.url, list);
    }
    await Promise.all([...byUrl].map(async ([url, list]) => {
      try {
        const res = await fetch(url, {
          method: 'POST', headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ heartbeats: list.map((e) => this.beat(e)) }),
          signal: AbortSignal.timeout(10_000),
        });
        const body = await res.json().catch(() => ({}));
        const results = Array.isArray(body?.results) ? body.results : [];
        results.forEach((r, i) => {
          const e = list[i];
          if (!e) return;
          e.hb_status = r.status;
          if (r.status === 410 && !e.hb_gone) {
            e.hb_gone = true; // the orchestrator retired this node: stop reporting it
            this.event(e, 'the orchestrator answered 410: heartbeats stop');
            this.persist();
          }
        });
      } catch (err) {
        this.log(`heartbeat to ${new URL(url).host} failed: ${String(err?.message ?? err).slice(0, 120)}`);
      }
    }));
  }

  // ---------------------------------------------------------------- loops
  start() {
    this.running = true;
    /** @param {() => number} seconds @param {() => Promise<void>} fn */
    const every = (seconds, fn) => {
      const loop = async () => {
        try { await fn(); } catch (err) { this.log(`loop error: ${String(err?.message ?? err).slice(0, 200)}`); }
        if (this.running) this.timers.push(setTimeout(loop, Math.max(50, seconds() * 1000)));
      };
      this.timers.push(setTimeout(loop, 0));
    };
    every(() => this.cfg.watchIntervalS, () => this.tick());
    every(() => this.heartbeatInterval(), () => this.heartbeatOnce());
  }

  heartbeatInterval() {
    let s = this.cfg.heartbeatIntervalS;
    for (const e of this.entries.values()) if (e.heartbeat?.interval_s) s = Math.min(s, e.heartbeat.interval_s);
    return Math.max(0.2, s);
  }

  stopLoops() {
    this.running = false;
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
  }

  /** Public view of an entry: never the node token, never the definition. @param {any} e */
  view(e) {
    return {
      node_id: e.node_id, pool_id: e.pool_id, job_id: e.job_id, previous_job_id: e.previous_job_id,
      job_ids: [...e.history, ...(e.job_id && !e.history.includes(e.job_id) ? [e.job_id] : [])],
      ipfs_hash: e.ipfs_hash, market: e.market, state: e.state, ready: Boolean(e.ready), url: e.url,
      node_host: e.node_host, price: e.price, timeout_s: e.timeout_s, job_timeout_s: e.job_timeout_s,
      time_start: e.time_start, time_end: e.time_end, attempts: e.attempts, stop_requested: e.stop_requested,
      last_end: e.last_end, last_error: e.last_error, created_at: e.created_at, updated_at: e.updated_at,
    };
  }
}

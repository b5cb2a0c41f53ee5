/**
 * A simulated Nosana market with the interface of src/chain.js, for tests and local development
 * (NOSANA_SIMULATE=1). Jobs move queued -> running (after a start delay) -> completed when their
 * timeout runs out; tests force completed / stopped / error, drain the balance (insufficient funds)
 * and move the clock. Its state lives in a file, like a chain outlives the sidecar process.
 */
import crypto from 'node:crypto';
import { ChainError } from './errors.js';
import { base58, readJson, writeJsonAtomic } from './util.js';

/**
 * @typedef {object} SimJob
 * @property {string} id
 * @property {string} ipfsHash
 * @property {string} market
 * @property {number} timeout
 * @property {number} price
 * @property {number} postedAt
 * @property {number} timeStart
 * @property {number} timeEnd
 * @property {string} state
 * @property {boolean} failed
 * @property {string | null} node
 * @property {string | null} url
 * @property {string[]} log
 */

/** @param {import('./config.js').Config} cfg */
export function createSimChain(cfg) {
  const file = cfg.simStateFile;
  /** @type {{offset: number, balance: number, hostIndex: number, jobs: Record<string, SimJob>, prices: Record<string, number>}} */
  const st = readJson(file ?? '', null) ?? {
    offset: 0, balance: cfg.simBalance, hostIndex: 0, jobs: {}, prices: {},
  };
  const save = () => { if (file) writeJsonAtomic(file, st); };
  const now = () => Date.now() / 1000 + st.offset;
  const priceOf = (market) => st.prices[market] ?? 1;

  /** @param {SimJob} j */
  function evolve(j) {
    const t = now();
    let changed = false;
    if (j.state === 'QUEUED' && t >= j.postedAt + cfg.simStartDelayS) {
      j.state = 'RUNNING';
      j.timeStart = j.postedAt + cfg.simStartDelayS;
      const hosts = cfg.simHostUrls;
      j.url = hosts.length ? hosts[st.hostIndex++ % hosts.length] : null;
      j.node = `simhost${st.hostIndex}`;
      j.log.push(`host ${j.node} claimed the job`);
      changed = true;
    }
    if (j.state === 'RUNNING' && t >= j.timeStart + j.timeout) {
      j.state = 'COMPLETED';
      j.timeEnd = j.timeStart + j.timeout;
      j.log.push('timeout reached: the host ended the job');
      changed = true;
    }
    if (changed) save();
    return j;
  }

  /** @param {string} id */
  function find(id) {
    const j = st.jobs[id];
    if (!j) throw new ChainError('not_found', `account does not exist: job ${id}`);
    return evolve(j);
  }

  /** @param {number} cost */
  function charge(cost) {
    if (st.balance < cost) throw new ChainError('insufficient_funds', 'insufficient funds: the wallet cannot pay for the job');
    st.balance -= cost;
  }

  return {
    simulated: true,
    now,
    async post(ipfsHash, timeoutS, market) {
      const price = priceOf(market);
      charge(price * timeoutS);
      const id = base58(crypto.randomBytes(32));
      st.jobs[id] = {
        id, ipfsHash, market, timeout: timeoutS, price, postedAt: now(), timeStart: 0, timeEnd: 0,
        state: 'QUEUED', failed: false, node: null, url: null, log: ['job listed'],
      };
      save();
      return { jobId: id };
    },
    async get(jobId) {
      const j = find(jobId);
      return { state: j.state, node: j.node, price: j.price, timeStart: j.timeStart, timeEnd: j.timeEnd,
        timeout: j.timeout, ipfsResult: null, failed: j.failed };
    },
    async stop(jobId) {
      const j = find(jobId);
      if (j.state === 'QUEUED' || j.state === 'RUNNING') {
        j.log.push(j.state === 'QUEUED' ? 'delisted by the poster' : 'ended by the poster');
        j.state = 'STOPPED';
        j.timeEnd = now();
        save();
      }
    },
    async extend(jobId, seconds) {
      const j = find(jobId);
      if (j.state !== 'QUEUED' && j.state !== 'RUNNING') {
        throw new ChainError('permanent', 'job cannot be extended when finished or stopped');
      }
      charge(j.price * seconds);
      j.timeout += seconds;
      j.log.push(`extended by ${seconds}s`);
      save();
    },
    async market(address) {
      const queued = Object.values(st.jobs).filter((j) => j.market === address && evolve(j).state === 'QUEUED');
      return { price: priceOf(address), queueType: queued.length ? 0 : 1, queueLength: queued.length || 3, jobTimeout: 0 };
    },
    async findByIpfsHash(ipfsHash) {
      const j = Object.values(st.jobs).find((x) => x.ipfsHash === ipfsHash);
      return j ? j.id : null;
    },
    async logs(jobId) {
      return find(jobId).log.map((l) => `[sim] ${l}`);
    },
    /** @param {string} jobId */
    serviceUrl(jobId) {
      return st.jobs[jobId]?.url ?? null;
    },

    // ---- controls (tests only, through /sim/* when NOSANA_SIMULATE=1)
    /** @param {number} seconds */
    advance(seconds) { st.offset += seconds; save(); },
    /** @param {string} jobId @param {string} to completed | stopped | error | running */
    force(jobId, to) {
      const j = find(jobId);
      const t = now();
      if (to === 'running') {
        if (j.state === 'QUEUED') { j.postedAt = t - cfg.simStartDelayS; evolve(j); }
      } else if (to === 'completed' || to === 'stopped' || to === 'error') {
        j.state = to === 'stopped' ? 'STOPPED' : 'COMPLETED';
        j.failed = to === 'error';
        j.timeEnd = t;
        j.log.push(to === 'error' ? 'the job failed on its host' : `the host ${to} the job`);
      } else {
        throw new ChainError('permanent', `unknown state ${to}`);
      }
      save();
    },
    /** @param {number} balance */
    setBalance(balance) { st.balance = balance; save(); },
    /** @param {string} market @param {number} price */
    setPrice(market, price) { st.prices[market] = price; save(); },
    snapshot() {
      for (const j of Object.values(st.jobs)) evolve(j);
      return { now: now(), balance: st.balance, jobs: Object.values(st.jobs).map(({ log, ...j }) => j) };
    },
  };
}

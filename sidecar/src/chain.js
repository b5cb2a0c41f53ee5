/**
 * The ONE module that touches the Nosana program through the SDK's `jobs.*`. Everything on-chain the
 * sidecar does goes through the small interface below, which tests replace with the simulated market
 * (src/simchain.js):
 *
 *   post(ipfsHash, timeoutS, market) -> {jobId}
 *   get(jobId)        -> {state: QUEUED|RUNNING|COMPLETED|STOPPED, node, price, timeStart, timeEnd, timeout, ipfsResult}
 *   stop(jobId)       -> delist a queued job, end a running one
 *   extend(jobId, s)  -> add s seconds to the job's timeout
 *   market(address)   -> {price, queueType, queueLength, jobTimeout}
 *   findByIpfsHash(h) -> a job of ours posted with that definition, or null
 *   now()             -> chain time in seconds
 */
import { Client } from '@nosana/sdk';
import { ChainError, classify } from './errors.js';

/** @typedef {{state: string, node: string | null, price: number, timeStart: number, timeEnd: number, timeout: number, ipfsResult: string | null, failed?: boolean}} ChainJob */

/**
 * @param {import('./config.js').Config} cfg
 * @param {import('@nosana/sdk').IPFS} ipfs the IPFS client the sidecar pins with
 */
export function createSdkChain(cfg) {
  const solana = cfg.rpc ? { network: cfg.rpc } : undefined;
  const client = new Client(cfg.network, cfg.wallet, { solana, ipfs: cfg.ipfs });
  const jobs = client.jobs;

  /** @template T @param {() => Promise<T>} fn @returns {Promise<T>} */
  async function call(fn) {
    try {
      return await fn();
    } catch (err) {
      throw classify(err);
    }
  }

  return {
    ipfs: client.ipfs,
    now: () => Date.now() / 1000,
    /** @param {string} ipfsHash @param {number} timeoutS @param {string} market */
    async post(ipfsHash, timeoutS, market) {
      const res = await call(() => jobs.list(ipfsHash, Math.round(timeoutS), market));
      if (!res || typeof res !== 'object' || !('job' in res)) throw new ChainError('transient', 'list returned no job');
      return { jobId: res.job };
    },
    /** @param {string} jobId @returns {Promise<ChainJob>} */
    async get(jobId) {
      const j = await call(() => jobs.get(jobId));
      const out = {
        state: String(j.state),
        node: j.node ? String(j.node) : null,
        price: Number(j.price ?? 0),
        timeStart: Number(j.timeStart ?? 0),
        timeEnd: Number(j.timeEnd ?? 0),
        timeout: Number(j.timeout ?? 0),
        ipfsResult: j.ipfsResult ?? null,
        failed: false,
      };
      if (out.state === 'COMPLETED' && out.ipfsResult) {
        try {
          const result = await client.ipfs.retrieve(out.ipfsResult);
          out.failed = Boolean(result?.state?.status && result.state.status !== 'success');
        } catch {
          /* the result may not be pinned yet: treat the job as ended */
        }
      }
      return out;
    },
    /** @param {string} jobId */
    async stop(jobId) {
      const j = await this.get(jobId);
      if (j.state === 'QUEUED') await call(() => jobs.delist(jobId));
      else if (j.state === 'RUNNING') await call(() => jobs.end(jobId));
    },
    /** @param {string} jobId @param {number} seconds */
    async extend(jobId, seconds) {
      await call(() => jobs.extend(jobId, Math.round(seconds)));
    },
    /** @param {string} address */
    async market(address) {
      const m = await call(() => jobs.getMarket(address));
      return {
        price: Number(m.jobPrice ?? 0),
        queueType: m.queueType ?? null,
        queueLength: Array.isArray(m.queue) ? m.queue.length : 0,
        jobTimeout: Number(m.jobTimeout ?? 0),
      };
    },
    /** Our jobs (project = this wallet) that reference the definition hash; used when resuming a post. */
    async findByIpfsHash(ipfsHash) {
      const owner = client.solana.provider?.wallet?.publicKey?.toBase58?.();
      if (!owner) return null;
      const candidates = await call(() => jobs.all({ project: owner, state: 0 }));
      if (!candidates.length) return null;
      const keys = candidates.map((c) => c.pubkey);
      const full = await call(() => jobs.getMultiple(keys, false));
      const idx = full.findIndex((j) => j.ipfsJob === ipfsHash);
      return idx >= 0 ? keys[idx].toBase58() : null;
    },
    /** Logs of a finished job from its result on IPFS (running jobs stream logs from the host only). */
    async logs(jobId) {
      const j = await this.get(jobId);
      if (!j.ipfsResult || j.state !== 'COMPLETED') return [];
      const result = await call(() => client.ipfs.retrieve(j.ipfsResult));
      const lines = [];
      for (const op of result?.state?.opStates ?? []) {
        for (const l of op.logs ?? []) if (l?.log) lines.push(`[${op.operationId ?? 'op'}] ${String(l.log).trimEnd()}`);
      }
      return lines;
    },
    /** The chain does not know a job's public URL; the watcher derives it from the definition. */
    serviceUrl: () => null,
  };
}

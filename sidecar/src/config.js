/**
 * Sidecar configuration, read once from the environment. Secrets (the internal API key, the wallet)
 * are kept here and never logged: `describe()` prints everything else.
 */
import fs from 'node:fs';

/** @param {string | undefined} v @param {number} dflt */
function num(v, dflt) {
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`invalid number ${JSON.stringify(v)}`);
  return n;
}

/**
 * @typedef {object} MarketInfo
 * @property {string} address
 * @property {string} [name]
 * @property {string} [gpu_type]
 * @property {number} [gpu_count]
 * @property {number} [gpu_memory_mb]
 */

/**
 * @typedef {object} Config
 * @property {string} host
 * @property {number} port
 * @property {string} apiKey
 * @property {string} stateDir
 * @property {boolean} simulate
 * @property {string} network
 * @property {string | undefined} wallet           secret: base58 or JSON array
 * @property {string | undefined} rpc
 * @property {{api?: string, gateway?: string, jwt?: string}} ipfs
 * @property {string} serviceUrlTemplate            e.g. https://{hash}.node.k8s.prd.nos.ci
 * @property {number} watchIntervalS
 * @property {number} heartbeatIntervalS
 * @property {number} extendThresholdS
 * @property {number} extendByS
 * @property {number} maxRedeploys
 * @property {number} redeployBackoffS
 * @property {number} redeployBackoffMaxS
 * @property {number} retainS
 * @property {number} probeTimeoutS
 * @property {MarketInfo[]} markets
 * @property {string | undefined} simStateFile
 * @property {string[]} simHostUrls
 * @property {number} simStartDelayS
 * @property {number} simBalance
 */

/** @param {NodeJS.ProcessEnv} env @returns {string | undefined} */
function readWallet(env) {
  if (env.NOSANA_WALLET) return env.NOSANA_WALLET.trim();
  if (env.NOSANA_WALLET_FILE) return fs.readFileSync(env.NOSANA_WALLET_FILE, 'utf8').trim();
  return undefined;
}

/** @param {NodeJS.ProcessEnv} env @returns {MarketInfo[]} */
function readMarkets(env) {
  let raw = env.NOSANA_MARKETS;
  if (!raw && env.NOSANA_MARKETS_FILE) raw = fs.readFileSync(env.NOSANA_MARKETS_FILE, 'utf8');
  if (!raw) return [];
  const list = JSON.parse(raw);
  if (!Array.isArray(list) || !list.every((m) => m && typeof m.address === 'string')) {
    throw new Error('NOSANA_MARKETS must be a JSON list of objects with an "address"');
  }
  return list;
}

/** @param {NodeJS.ProcessEnv} [env] @returns {Config} */
export function loadConfig(env = process.env) {
  const apiKey = env.NOSANA_INTERNAL_API_KEY ?? '';
  if (apiKey.length < 16) throw new Error('NOSANA_INTERNAL_API_KEY must be set (16 characters or more)');
  const simulate = env.NOSANA_SIMULATE === '1';
  const wallet = readWallet(env);
  if (!simulate && !wallet) throw new Error('NOSANA_WALLET or NOSANA_WALLET_FILE must be set (or NOSANA_SIMULATE=1)');
  return {
    host: env.NOSANA_SIDECAR_HOST || '127.0.0.1',
    port: num(env.NOSANA_SIDECAR_PORT ?? env.PORT, 3000),
    apiKey,
    stateDir: env.NOSANA_STATE_DIR || './state',
    simulate,
    network: env.NOSANA_NETWORK === 'devnet' ? 'devnet' : 'mainnet',
    wallet,
    rpc: env.NOSANA_RPC_URL || undefined,
    ipfs: {
      api: env.NOSANA_IPFS_API || undefined,
      gateway: env.NOSANA_IPFS_GATEWAY || undefined,
      jwt: env.NOSANA_IPFS_JWT || undefined,
    },
    serviceUrlTemplate: env.NOSANA_SERVICE_URL_TEMPLATE || 'https://{hash}.node.k8s.prd.nos.ci',
    watchIntervalS: num(env.NOSANA_WATCH_INTERVAL_S, 10),
    heartbeatIntervalS: num(env.NOSANA_HEARTBEAT_INTERVAL_S, 10),
    extendThresholdS: num(env.NOSANA_EXTEND_THRESHOLD_S, 600),
    extendByS: num(env.NOSANA_EXTEND_BY_S, 0),
    maxRedeploys: num(env.NOSANA_MAX_REDEPLOYS, 5),
    redeployBackoffS: num(env.NOSANA_REDEPLOY_BACKOFF_S, 10),
    redeployBackoffMaxS: num(env.NOSANA_REDEPLOY_BACKOFF_MAX_S, 300),
    retainS: num(env.NOSANA_RETAIN_S, 3600),
    probeTimeoutS: num(env.NOSANA_PROBE_TIMEOUT_S, 5),
    markets: readMarkets(env),
    simStateFile: env.NOSANA_SIM_STATE_FILE || undefined,
    simHostUrls: (env.NOSANA_SIM_HOST_URLS || '').split(',').map((s) => s.trim()).filter(Boolean),
    simStartDelayS: num(env.NOSANA_SIM_START_DELAY_S, 1),
    simBalance: num(env.NOSANA_SIM_BALANCE, 1e12),
  };
}

/** A loggable view of the config: no secret, only whether one is set. @param {Config} cfg */
export function describe(cfg) {
  const { apiKey, wallet, ipfs, ...rest } = cfg;
  return { ...rest, apiKey: apiKey ? '<set>' : '<unset>', wallet: wallet ? '<set>' : '<unset>',
    ipfs: { api: ipfs.api, gateway: ipfs.gateway, jwt: ipfs.jwt ? '<set>' : '<unset>' } };
}

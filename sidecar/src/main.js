/** Entry point: `npm start`. Reads the config from the environment (see README.md). */
import { IPFS } from '@nosana/sdk';
import { createServer } from './app.js';
import { createSdkChain } from './chain.js';
import { describe, loadConfig } from './config.js';
import { createSimChain } from './simchain.js';
import { WatchStore } from './store.js';
import { Watcher } from './watcher.js';

const log = (msg) => console.log(`${new Date().toISOString()} nosana-sidecar ${msg}`);

let cfg;
try {
  cfg = loadConfig();
} catch (err) {
  console.error(`nosana-sidecar: configuration error: ${err.message}`);
  process.exit(2);
}
log(`config ${JSON.stringify(describe(cfg))}`);

const chain = cfg.simulate ? createSimChain(cfg) : createSdkChain(cfg);
// the real SDK pins in both modes; in simulated mode it talks to whatever NOSANA_IPFS_API points at
const ipfs = cfg.simulate ? new IPFS(cfg.network, cfg.ipfs) : chain.ipfs;
const watcher = new Watcher({ cfg, chain, ipfs, store: new WatchStore(cfg.stateDir), log });
const server = createServer({ cfg, watcher, chain });

server.listen(cfg.port, cfg.host, () => {
  const addr = server.address();
  log(`listening on http://${cfg.host}:${typeof addr === 'object' && addr ? addr.port : cfg.port} (${watcher.entries.size} jobs resumed)`);
  watcher.start();
});

const shutdown = (sig) => {
  log(`${sig}: shutting down (jobs keep running; the watch list is on disk)`);
  watcher.stopLoops();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

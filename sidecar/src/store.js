/** The watch list on disk: one JSON file, replaced atomically on every change (mode 0600). */
import path from 'node:path';
import { readJson, writeJsonAtomic } from './util.js';

const VERSION = 1;
/** fields of an entry that live only in memory */
const VOLATILE = new Set(['ready', 'probe_error', 'hb_status']);

export class WatchStore {
  /** @param {string} stateDir */
  constructor(stateDir) {
    this.file = path.join(stateDir, 'watch.json');
  }

  /** @returns {any[]} */
  load() {
    const data = readJson(this.file, { version: VERSION, entries: [] });
    if (data.version !== VERSION || !Array.isArray(data.entries)) {
      throw new Error(`${this.file}: unknown watch list format`);
    }
    return data.entries;
  }

  /** @param {Iterable<any>} entries */
  save(entries) {
    const out = [];
    for (const e of entries) out.push(Object.fromEntries(Object.entries(e).filter(([k]) => !VOLATILE.has(k))));
    writeJsonAtomic(this.file, { version: VERSION, entries: out });
  }
}

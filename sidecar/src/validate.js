/** Request body validation: every error names the field (400 {error, field, message}). */
import { validateJobDefinition } from '@nosana/sdk';

export class BadRequest extends Error {
  /** @param {string} field @param {string} message */
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

const NODE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const BASE58 = /^[1-9A-HJ-NP-Za-km-z]{32,44}$/;
const MAX_TIMEOUT_S = 30 * 24 * 3600;

/** @param {unknown} v */
const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * @param {unknown} body
 * @param {{secrets: string[]}} opts values that must never appear in a job definition
 */
export function parseLaunch(body, { secrets }) {
  if (!isObject(body)) throw new BadRequest('body', 'must be a JSON object');
  const b = /** @type {Record<string, any>} */ (body);
  if (typeof b.node_id !== 'string' || !NODE_ID.test(b.node_id)) {
    throw new BadRequest('node_id', 'required: 1-128 characters of A-Z a-z 0-9 . _ : -');
  }
  if (!isObject(b.job_definition)) throw new BadRequest('job_definition', 'required: a Nosana job definition object');
  const check = validateJobDefinition(b.job_definition);
  if (!check.success) {
    const err = check.errors[0];
    const field = `job_definition${err.path.replace(/^\$input/, '')}`;
    throw new BadRequest(field, `does not match the Nosana job schema (expected ${err.expected})`);
  }
  const text = JSON.stringify(b.job_definition);
  if (secrets.some((s) => s && text.includes(s))) {
    throw new BadRequest('job_definition', "must not contain the sidecar's secrets");
  }
  if (typeof b.market !== 'string' || !BASE58.test(b.market)) {
    throw new BadRequest('market', 'required: a market address (base58)');
  }
  if (!Number.isInteger(b.timeout_s) || b.timeout_s < 1 || b.timeout_s > MAX_TIMEOUT_S) {
    throw new BadRequest('timeout_s', `required: an integer number of seconds, 1 to ${MAX_TIMEOUT_S}`);
  }
  const hb = b.heartbeat;
  if (!isObject(hb)) throw new BadRequest('heartbeat', 'required: {url, token}');
  if (typeof hb.url !== 'string' || !/^https?:\/\/[^\s]+$/.test(hb.url)) {
    throw new BadRequest('heartbeat.url', 'required: an http(s) URL');
  }
  if (typeof hb.token !== 'string' || hb.token.length < 1 || hb.token.length > 256) {
    throw new BadRequest('heartbeat.token', 'required: the node token');
  }
  if (hb.interval_s !== undefined && (typeof hb.interval_s !== 'number' || !(hb.interval_s > 0))) {
    throw new BadRequest('heartbeat.interval_s', 'must be a positive number');
  }
  if (b.pool_id !== undefined && (typeof b.pool_id !== 'string' || b.pool_id.length > 128)) {
    throw new BadRequest('pool_id', 'must be a string of at most 128 characters');
  }
  if (b.health_path !== undefined && (typeof b.health_path !== 'string' || !b.health_path.startsWith('/'))) {
    throw new BadRequest('health_path', 'must be a path starting with /');
  }
  return {
    node_id: b.node_id,
    job_definition: b.job_definition,
    market: b.market,
    timeout_s: b.timeout_s,
    heartbeat: { url: hb.url, token: hb.token, ...(hb.interval_s ? { interval_s: hb.interval_s } : {}) },
    ...(b.pool_id !== undefined ? { pool_id: b.pool_id } : {}),
    ...(b.health_path !== undefined ? { health_path: b.health_path } : {}),
  };
}

/** @param {unknown} body */
export function parseExtend(body) {
  const s = isObject(body) ? /** @type {any} */ (body).seconds : undefined;
  if (!Number.isInteger(s) || s < 1 || s > MAX_TIMEOUT_S) {
    throw new BadRequest('seconds', `required: an integer number of seconds, 1 to ${MAX_TIMEOUT_S}`);
  }
  return s;
}

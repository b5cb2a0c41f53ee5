import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { IPFS } from '@nosana/sdk';
import { KEY, MARKET, definition, launchBody, setup } from './helpers.js';

describe('HTTP API', () => {
  let ctx;
  before(async () => { ctx = await setup(); });
  after(async () => { await ctx.close(); });

  test('health is open, everything else needs the key (401 missing, 403 wrong)', async () => {
    const sc = ctx.sidecar;
    const health = await sc.call('GET', '/health', undefined, {});
    assert.equal(health.status, 200);
    assert.equal(health.body.status, 'ok');
    for (const [method, p] of [['GET', '/jobs/x'], ['POST', '/jobs/launch'], ['GET', '/markets'], ['POST', '/jobs/x/stop'],
      ['POST', '/jobs/x/extend'], ['GET', '/jobs/x/logs'], ['GET', '/jobs']]) {
      assert.equal((await sc.call(method, p, method === 'POST' ? {} : undefined, {})).status, 401, `${method} ${p}`);
      const wrong = await sc.call(method, p, method === 'POST' ? {} : undefined, { 'x-internal-api-key': 'nope' });
      assert.equal(wrong.status, 403, `${method} ${p}`);
    }
    assert.equal((await sc.call('GET', '/jobs/unknown')).status, 404);
  });

  test('bad bodies are 400 and name the field', async () => {
    const sc = ctx.sidecar;
    const base = launchBody(ctx, 'node-v');
    const cases = [
      [{ ...base, node_id: undefined }, 'node_id'],
      [{ ...base, node_id: 'bad id/x' }, 'node_id'],
      [{ ...base, job_definition: 'x' }, 'job_definition'],
      [{ ...base, job_definition: { ...definition(), ops: [{ type: 'container/run', id: 'e', args: {} }] } }, 'job_definition.ops[0].args'],
      [{ ...base, job_definition: { ...definition(), type: 'vm' } }, 'job_definition.type'],
      [{ ...base, market: 'not a market' }, 'market'],
      [{ ...base, timeout_s: 0 }, 'timeout_s'],
      [{ ...base, timeout_s: '60' }, 'timeout_s'],
      [{ ...base, heartbeat: undefined }, 'heartbeat'],
      [{ ...base, heartbeat: { url: 'ftp://x', token: 't' } }, 'heartbeat.url'],
      [{ ...base, heartbeat: { url: ctx.orch.url } }, 'heartbeat.token'],
      [{ ...base, job_definition: definition({ env: { LEAK: KEY } }) }, 'job_definition'],
    ];
    for (const [body, field] of cases) {
      const r = await sc.call('POST', '/jobs/launch', body);
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.equal(r.body.field, field);
      assert.ok(!JSON.stringify(r.body).includes(KEY), 'the key is never echoed');
    }
    const bad = await fetch(`${sc.url}/jobs/launch`, { method: 'POST', headers: { 'x-internal-api-key': KEY }, body: '{' });
    assert.equal(bad.status, 400);
    assert.equal((await sc.call('POST', '/jobs/x/extend', { seconds: -1 })).body.field, 'seconds');
    assert.equal((await sc.call('GET', '/sim/state')).body.jobs.length, 0, 'no invalid launch reached the market');
  });

  test('launch pins with the real SDK and posts once; a relaunch of the node returns the same job', async () => {
    const sc = ctx.sidecar;
    const body = launchBody(ctx, 'node-a');
    const first = await sc.call('POST', '/jobs/launch', body);
    assert.equal(first.status, 201);
    assert.equal(first.body.state, 'queued');
    assert.match(first.body.job_id, /^[1-9A-HJ-NP-Za-km-z]{40,44}$/);
    assert.match(first.body.ipfs_hash, /^Qm/);
    // the pinned definition round-trips through the gateway (the SDK's own retrieve)
    const sdkIpfs = new IPFS('mainnet', { api: ctx.sidecarEnv.NOSANA_IPFS_API, gateway: ctx.sidecarEnv.NOSANA_IPFS_GATEWAY });
    assert.deepEqual(await sdkIpfs.retrieve(first.body.ipfs_hash), body.job_definition);

    const again = await Promise.all([1, 2, 3].map(() => sc.call('POST', '/jobs/launch', body)));
    for (const r of again) {
      assert.equal(r.status, 200);
      assert.equal(r.body.job_id, first.body.job_id);
    }
    const sim = (await sc.call('GET', '/sim/state')).body;
    assert.equal(sim.jobs.filter((j) => j.ipfsHash === first.body.ipfs_hash).length, 1, 'posted exactly once');

    const byJob = await sc.call('GET', `/jobs/${first.body.job_id}`);
    const byNode = await sc.call('GET', '/jobs/node-a');
    assert.equal(byJob.body.node_id, 'node-a');
    assert.deepEqual(byJob.body.job_id, byNode.body.job_id);
    assert.ok(!JSON.stringify(byJob.body).includes('tok-node-a'), 'the node token is never returned');
    const listed = await sc.call('GET', '/jobs?pool_id=pool-1&active=1');
    assert.deepEqual(listed.body.jobs.map((j) => j.node_id), ['node-a']);

    const logs = await sc.call('GET', '/jobs/node-a/logs');
    assert.ok(logs.body.lines.some((l) => l.includes('posted')), JSON.stringify(logs.body));
    const ext = await sc.call('POST', `/jobs/${first.body.job_id}/extend`, { seconds: 600 });
    assert.equal(ext.status, 200);
    const simJob = (await sc.call('GET', '/sim/state')).body.jobs.find((j) => j.id === first.body.job_id);
    assert.equal(simJob.timeout, 3600 + 600);
  });

  test('markets report price and queue', async () => {
    const r = await ctx.sidecar.call('GET', '/markets');
    assert.equal(r.status, 200);
    assert.equal(r.body.markets.length, 1);
    const m = r.body.markets[0];
    assert.equal(m.address, MARKET);
    assert.equal(m.gpu_type, 'RTX 3090');
    assert.equal(typeof m.price_per_hour, 'number');
    assert.ok(['nodes', 'jobs'].includes(m.queue_type));
  });

  test('insufficient funds is a terminal state and a 402', async () => {
    const sc = ctx.sidecar;
    await sc.call('POST', '/sim/balance', { balance: 0 });
    const r = await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-poor'));
    assert.equal(r.status, 402);
    assert.equal(r.body.error, 'insufficient_funds');
    assert.equal((await sc.call('GET', '/jobs/node-poor')).body.state, 'insufficient_funds');
    await sc.call('POST', '/sim/balance', { balance: 1e12 });
  });
});

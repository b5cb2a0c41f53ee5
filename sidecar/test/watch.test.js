import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { launchBody, setup, waitFor } from './helpers.js';

let ctx;
afterEach(async () => { await ctx?.close(); ctx = undefined; });

const job = async (sc, id) => (await sc.call('GET', `/jobs/${id}`)).body;
const simJobs = async (sc) => (await sc.call('GET', '/sim/state')).body.jobs;
const active = (jobs) => jobs.filter((j) => j.state === 'QUEUED' || j.state === 'RUNNING');

test('queued -> running -> heartbeats starting then ready with the public URL', async () => {
  ctx = await setup();
  const sc = ctx.sidecar;
  const { body } = await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-w'));
  assert.equal(body.state, 'queued');
  await waitFor(() => ctx.orch.beats('node-w').some((b) => b.state === 'starting'), 'a starting beat');
  const ready = await waitFor(() => ctx.orch.beats('node-w').find((b) => b.state === 'ready'), 'a ready beat');
  assert.equal(ready.endpoint, ctx.service.url);
  assert.equal(ready.provider, 'nosana');
  assert.equal(ready.provider_instance_id, body.job_id);
  assert.equal(ready.token, 'tok-node-w');
  assert.equal(ready.health_score, 100);
  const j = await job(sc, 'node-w');
  assert.equal(j.state, 'running');
  assert.equal(j.ready, true);
  assert.ok(j.node_host);
  // batched: one request carries every node of an orchestrator
  await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-w2'));
  await waitFor(() => ctx.orch.batches.some((b) => b.heartbeats.length === 2), 'a batch with both nodes');
});

test('auto-extend when the remaining time drops below the threshold', async () => {
  ctx = await setup({ NOSANA_EXTEND_THRESHOLD_S: '60', NOSANA_EXTEND_BY_S: '300' });
  const sc = ctx.sidecar;
  const { body } = await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-x', { timeout_s: 120 }));
  await waitFor(async () => (await job(sc, 'node-x')).state === 'running', 'running');
  assert.equal((await simJobs(sc))[0].timeout, 120, 'no extend while time is left');
  await sc.call('POST', '/sim/clock', { advance_s: 90 }); // 30 s left < 60 s threshold
  await waitFor(async () => (await simJobs(sc))[0].timeout === 420, 'extended by 300 s');
  await new Promise((r) => setTimeout(r, 300));
  const [simJob] = await simJobs(sc);
  assert.equal(simJob.state, 'RUNNING');
  assert.equal(simJob.id, body.job_id);
  assert.equal(simJob.timeout, 420, 'extended once, not on every tick');
});

test('a job that dies is redeployed: same node, new job id reported with the previous one', async () => {
  ctx = await setup();
  const sc = ctx.sidecar;
  const { body } = await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-r'));
  await waitFor(async () => (await job(sc, 'node-r')).state === 'running', 'running');
  for (const how of ['error', 'completed', 'stopped']) {
    const before = (await job(sc, 'node-r')).job_id;
    await sc.call('POST', `/sim/jobs/${before}/state`, { state: how });
    const after = await waitFor(async () => {
      const j = await job(sc, 'node-r');
      return j.job_id !== before && j.state === 'running' && j;
    }, `redeploy after ${how}`);
    assert.equal(after.previous_job_id, before);
    const beat = await waitFor(() => ctx.orch.beats('node-r').find((b) => b.state === 'ready' && b.provider_instance_id === after.job_id), 'a ready beat for the new job');
    assert.equal(beat.previous_provider_instance_id, before);
    assert.equal(beat.node_id, 'node-r');
  }
  const j = await job(sc, 'node-r');
  assert.equal(j.attempts, 3);
  assert.equal(j.job_ids[0], body.job_id);
  assert.equal(active(await simJobs(sc)).length, 1, 'one live job per node');
  // attempts are bounded: the 4th death is final
  await sc.call('POST', `/sim/jobs/${j.job_id}/state`, { state: 'error' });
  await waitFor(async () => (await job(sc, 'node-r')).state === 'failed', 'failed');
  await waitFor(() => ctx.orch.beats('node-r').at(-1).state === 'failed', 'a failed beat');
  assert.equal(active(await simJobs(sc)).length, 0);
});

test('a stop we asked for is never redeployed', async () => {
  ctx = await setup();
  const sc = ctx.sidecar;
  const { body } = await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-s'));
  await waitFor(async () => (await job(sc, 'node-s')).state === 'running', 'running');
  const stop = await sc.call('POST', `/jobs/${body.job_id}/stop`);
  assert.equal(stop.status, 200);
  assert.equal(stop.body.state, 'stopped');
  assert.equal((await sc.call('POST', '/jobs/node-s/stop')).status, 200, 'stop is idempotent');
  const beatsAtStop = ctx.orch.beats('node-s').length;
  await new Promise((r) => setTimeout(r, 800));
  const jobs = await simJobs(sc);
  assert.equal(jobs.length, 1, 'no redeploy');
  assert.equal(jobs[0].state, 'STOPPED');
  assert.equal((await job(sc, 'node-s')).state, 'stopped');
  assert.ok(ctx.orch.beats('node-s').length <= beatsAtStop + 1, 'no heartbeats after the stop');
  // a queued job is delisted
  const q = await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-q'));
  const stopQ = await sc.call('POST', '/jobs/node-q/stop');
  assert.equal(stopQ.body.state, 'stopped');
  assert.equal((await simJobs(sc)).find((j) => j.id === q.body.job_id).state, 'STOPPED');
});

test('heartbeats for a node the orchestrator answers 410 for stop', async () => {
  ctx = await setup();
  const sc = ctx.sidecar;
  ctx.orch.statusFor = (h) => (h.node_id === 'node-g' ? 410 : 200);
  await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-g'));
  await waitFor(() => ctx.orch.beats('node-g').length > 0, 'a beat');
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(ctx.orch.beats('node-g').length, 1);
});

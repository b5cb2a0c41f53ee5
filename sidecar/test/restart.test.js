import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, test } from 'node:test';
import { KEY, launchBody, setup, waitFor } from './helpers.js';

let ctx;
afterEach(async () => { await ctx?.close(); ctx = undefined; });

const job = async (sc, id) => (await sc.call('GET', `/jobs/${id}`)).body;
const simJobs = async (sc) => (await sc.call('GET', '/sim/state')).body.jobs;

test('a restarted sidecar resumes every job: none lost, none launched twice', async () => {
  ctx = await setup();
  let sc = ctx.sidecar;
  const a = (await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-1'))).body;
  const b = (await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-2'))).body;
  await waitFor(async () => (await job(sc, 'node-1')).state === 'running', 'running');

  // the watch list on disk: private, and free of the sidecar's secrets
  const file = path.join(ctx.sidecarEnv.NOSANA_STATE_DIR, 'watch.json');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  assert.ok(!fs.readFileSync(file, 'utf8').includes(KEY));

  sc = await ctx.restart(); // SIGKILL, then a new process on the same state
  const beatsBefore = ctx.orch.beats('node-1').length;
  assert.equal((await job(sc, 'node-1')).job_id, a.job_id);
  assert.equal((await job(sc, 'node-2')).job_id, b.job_id);
  await waitFor(() => ctx.orch.beats('node-1').length > beatsBefore + 2, 'heartbeats resume');
  assert.equal(ctx.orch.beats('node-1').at(-1).provider_instance_id, a.job_id);

  const again = await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-1'));
  assert.equal(again.status, 200);
  assert.equal(again.body.job_id, a.job_id);
  assert.equal((await simJobs(sc)).length, 2, 'no job was posted twice');

  // the resumed watcher still redeploys and still honours a stop
  await sc.call('POST', `/sim/jobs/${a.job_id}/state`, { state: 'error' });
  const moved = await waitFor(async () => { const j = await job(sc, 'node-1'); return j.job_id !== a.job_id && j; }, 'redeploy');
  assert.equal(moved.previous_job_id, a.job_id);
  await sc.call('POST', '/jobs/node-2/stop');
  sc = await ctx.restart();
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await job(sc, 'node-2')).state, 'stopped');
  const jobs = await simJobs(sc);
  assert.equal(jobs.length, 3);
  assert.equal(jobs.filter((j) => j.state === 'QUEUED' || j.state === 'RUNNING').length, 1);
});

test('a redeploy pending at a crash is carried out once by the next process', async () => {
  ctx = await setup({ NOSANA_REDEPLOY_BACKOFF_S: '1' });
  let sc = ctx.sidecar;
  const a = (await sc.call('POST', '/jobs/launch', launchBody(ctx, 'node-3'))).body;
  await waitFor(async () => (await job(sc, 'node-3')).state === 'running', 'running');
  await sc.call('POST', `/sim/jobs/${a.job_id}/state`, { state: 'completed' });
  await waitFor(async () => (await job(sc, 'node-3')).state === 'redeploying', 'redeploying');
  sc = await ctx.restart();
  const j = await waitFor(async () => { const x = await job(sc, 'node-3'); return x.state === 'running' && x; }, 'redeployed after the restart');
  assert.equal(j.previous_job_id, a.job_id);
  assert.equal(j.attempts, 1);
  assert.equal((await simJobs(sc)).length, 2);
});

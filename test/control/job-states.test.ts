import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  canTransition,
  checkVerb,
  isTerminal,
  JOB_STATES,
  JOB_TRANSITIONS,
  JOB_VERBS,
  JOB_VERBS_ALL,
  type JobState,
} from '../../src/control/job-states.js';
import { errorCodeOf, errorMessageOf } from '../../src/util/errors.js';

test('job states: every state reaches an end, and the ends go nowhere', () => {
  const terminal = JOB_STATES.filter(isTerminal);
  assert.deepEqual(terminal, ['succeeded', 'failed', 'cancelled']);
  for (const state of JOB_STATES) {
    for (const next of JOB_TRANSITIONS[state]) assert.ok(JOB_STATES.includes(next));
    // Breadth-first: some terminal state is reachable from every state.
    const seen = new Set<JobState>([state]);
    const queue: JobState[] = [state];
    for (let at = queue.shift(); at !== undefined; at = queue.shift()) {
      for (const next of JOB_TRANSITIONS[at]) {
        if (!seen.has(next)) queue.push(next);
        seen.add(next);
      }
    }
    assert.ok([...seen].some(isTerminal), `${state} can reach no end: ${[...seen].join(', ')}`);
  }
  assert.ok(canTransition('running', 'switching'));
  assert.ok(!canTransition('switching', 'running'));
  assert.ok(!canTransition('succeeded', 'failed'));
  assert.ok(canTransition('queued', 'running'));
  assert.ok(canTransition('queued', 'cancelled'));
  assert.ok(!canTransition('running', 'queued'));
});

test('job states: verbs only while queued or running, and a refusal says what the state allows', () => {
  for (const state of JOB_STATES) {
    for (const verb of JOB_VERBS_ALL) {
      const isAllowed = JOB_VERBS[state].includes(verb);
      assert.equal(isAllowed, state === 'running' || state === 'queued', `${verb} in ${state}`);
      if (isAllowed) {
        checkVerb('j1', state, verb);
        continue;
      }
      assert.throws(
        () => checkVerb('j1', state, verb),
        (error: unknown) => {
          assert.equal(errorCodeOf(error), 'ERR_JOB_STATE');
          const message = errorMessageOf(error);
          assert.ok(message.includes(`job j1`), message);
          assert.ok(message.includes(`state ${state}`), message);
          assert.ok(message.includes('only while queued or running'), message);
          return true;
        },
      );
    }
  }
});

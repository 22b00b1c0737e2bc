/**
 * The crash tests (crash-cases.ts) at the points before the switchover's commit is asked for:
 * half-way through the copy, and in the final copy.
 */
import { CRASH_CASES, defineCrashTests } from './crash-cases.js';

defineCrashTests(CRASH_CASES.filter(({ point }) => point === 'copy' || point === 'final-copy'));

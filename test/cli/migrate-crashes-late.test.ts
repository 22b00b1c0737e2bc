/**
 * The crash tests (crash-cases.ts) at and after the commit: just before it, just after it, and
 * just after the guest resumes on the destination.
 */
import { CRASH_CASES, defineCrashTests } from './crash-cases.js';

defineCrashTests(CRASH_CASES.filter(({ point }) => point !== 'copy' && point !== 'final-copy'));

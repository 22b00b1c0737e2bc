import { type TestContext, test } from 'node:test';
import { hasTool, isCi } from '../nbd/interop-helpers.js';
import { isNetnsAvailable, netnsUnavailableReason } from './netns.js';

/**
 * `test()` for a case that needs network namespaces (root, `ip netns add`) and maybe real tools.
 * The interop rule (STYLE.md, "Tests"): outside CI what is missing skips the case with the
 * reason; with CI=true the case runs and fails at once, naming what is missing.
 */
export function netnsTest(
  name: string,
  options: { readonly tools?: readonly string[]; readonly timeoutMs?: number },
  body: (t: TestContext) => Promise<void>,
): void {
  const reason = missingReason(options.tools ?? []);
  const timeout = options.timeoutMs ?? 60_000;
  if (reason !== undefined && !isCi) {
    test(name, { skip: reason }, () => undefined);
    return;
  }
  test(name, { timeout }, async (t) => {
    if (reason !== undefined) throw new Error(`${reason}; CI=true, so this test may not skip`);
    await body(t);
  });
}

function missingReason(tools: readonly string[]): string | undefined {
  const missing = ['ip', ...tools].filter((tool) => !hasTool(tool));
  if (missing.length > 0) return `${missing.join(', ')} not installed`;
  if (!isNetnsAvailable()) return netnsUnavailableReason();
  return undefined;
}

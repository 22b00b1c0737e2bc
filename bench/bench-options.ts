/** What the benchmark entries share when they read their command lines. */

/** `text` as a positive whole number; throws naming the flag `--what` otherwise. */
export function positiveInteger(text: string, what: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new Error(`--${what} must be a positive integer`);
  }
  return value;
}

/** The sections `--only` names (all by default), in the entry's order; throws on an unknown one. */
export function sectionsOf<S extends string>(
  only: readonly string[] | undefined,
  all: readonly S[],
): S[] {
  const asked = only ?? [...all];
  for (const section of asked) {
    if (!(all as readonly string[]).includes(section)) {
      throw new Error(`--only ${section}: expected ${all.join(', ')}`);
    }
  }
  return all.filter((section) => asked.includes(section));
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `check` until it holds or `timeoutMs` passes, and returns its last answer. For state that
 * settles just after a client's request ends (a cache fill commits its blob after the last byte
 * has been sent), so a test asserts the settled state instead of racing it.
 */
export async function eventually(check: () => Promise<boolean>, timeoutMs = 5_000, everyMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(everyMs);
  }
}

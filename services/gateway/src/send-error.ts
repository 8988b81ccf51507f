import type { ServerResponse } from 'node:http';
import type { RegistryError } from '../../../lib/oci/errors.js';

/**
 * Answers with the error's OCI error JSON; a response already under way is broken off instead.
 * `defaults`: headers the error's own override (the gateway's challenge on a 401).
 */
export function sendError(res: ServerResponse, error: RegistryError, defaults: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify(error.toBody());
  res.writeHead(error.status, {
    ...defaults,
    ...error.headers,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'docker-distribution-api-version': 'registry/2.0',
  });
  res.end(body);
}

import { request as httpRequest, type Agent } from 'node:http';
import { WORKER_STATUS_PATH, type WorkerPlan } from '../../../../lib/appliance.js';

/** A cache worker's view of its upstream (GET /_stevedore/status on its socket). */
export interface WorkerStatus {
  kind: 'hosted' | 'proxy';
  circuitOpen?: boolean;
  consecutiveFailures?: number;
  lastError?: { at: string; message: string } | null;
  lastSuccessAt?: string | null;
  rateLimit?: { limit: { value: number; windowSeconds?: number } | null; remaining: { value: number; windowSeconds?: number } | null; at: string } | null;
}

/** A worker that does not answer within this is "worker down" on the overview (the page must not hang on it). */
const STATUS_TIMEOUT_MS = 1_500;
const STATUS_MAX_BYTES = 64 * 1024;

/** The worker's status, or undefined when it does not answer (stopped, restarting, stuck). */
export function readWorkerStatus(worker: WorkerPlan, agent: Agent): Promise<WorkerStatus | undefined> {
  return new Promise((resolve) => {
    const req = httpRequest({ socketPath: worker.socketPath, path: WORKER_STATUS_PATH, method: 'GET', agent, timeout: STATUS_TIMEOUT_MS }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
        if (body.length > STATUS_MAX_BYTES) req.destroy();
      });
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 ? (JSON.parse(body) as WorkerStatus) : undefined);
        } catch {
          resolve(undefined);
        }
      });
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

export type UpstreamState = 'healthy' | 'failing' | 'circuit open' | 'worker down';

/**
 * The overview's state of one worker's upstream, from the worker's own circuit breaker: open, or
 * failures since the upstream last answered (the gateway's error counters lag: they only rise).
 */
export function upstreamState(status: WorkerStatus | undefined): UpstreamState {
  if (!status) return 'worker down';
  if (status.circuitOpen) return 'circuit open';
  if ((status.consecutiveFailures ?? 0) > 0) return 'failing';
  return 'healthy';
}

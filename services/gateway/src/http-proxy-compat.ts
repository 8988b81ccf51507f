import util from 'node:util';

/**
 * http-proxy 1.18.1 (its last release) copies its options with `util._extend`, runtime-deprecated
 * since Node 22 (DEP0060: a warning in the gateway's output) and on its way out of Node. It only
 * ever needs Object.assign's copy, which is what it gets here. Imported before http-proxy.
 */
const extend = (target: object, source: unknown): object =>
  source === null || typeof source !== 'object' ? target : Object.assign(target, source);
(util as unknown as { _extend: typeof extend })._extend = extend;

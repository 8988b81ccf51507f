/**
 * The one error type that leaves a registry. The code table alone fixes the default HTTP status and
 * message (OCI distribution-spec v1.1 error codes, statuses as distribution answers them); a call
 * site adds a detail and, only where the spec names a different status (416 for ranges, 413 for an
 * oversized manifest), overrides the status.
 */
export const ERROR_CODES = {
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  BLOB_UPLOAD_INVALID: { status: 400, message: 'blob upload invalid' },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: 'blob upload unknown to registry' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_BLOB_UNKNOWN: { status: 400, message: 'manifest references a manifest or blob unknown to registry' },
  MANIFEST_INVALID: { status: 400, message: 'manifest invalid' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown to registry' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  SIZE_INVALID: { status: 400, message: 'provided length did not match content length' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { status: 405, message: 'the operation is unsupported' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  UNAVAILABLE: { status: 503, message: 'service unavailable' },
  UNKNOWN: { status: 500, message: 'unknown error' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface RegistryErrorOptions {
  /** Overrides the code's default status where the spec asks for another one. */
  status?: number;
  /** Replaces the code's generic message with a more specific one. */
  message?: string;
  /** Extra response headers (Range, Content-Range, Retry-After, WWW-Authenticate). */
  headers?: Record<string, string>;
}

export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: unknown;
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, detail?: unknown, options: RegistryErrorOptions = {}) {
    super(options.message ?? ERROR_CODES[code].message);
    this.name = 'RegistryError';
    this.code = code;
    this.status = options.status ?? ERROR_CODES[code].status;
    this.detail = detail;
    this.headers = options.headers ?? {};
  }

  /** The OCI error JSON body: {"errors":[{"code","message","detail"}]}. */
  toBody(): { errors: Array<{ code: ErrorCode; message: string; detail?: unknown }> } {
    const entry: { code: ErrorCode; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) entry.detail = this.detail;
    return { errors: [entry] };
  }
}

export function isRegistryError(err: unknown): err is RegistryError {
  return err instanceof RegistryError;
}

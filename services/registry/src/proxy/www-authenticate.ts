/** A parsed `WWW-Authenticate` challenge: its scheme and parameters (realm, service, scope, ...). */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

// One `name=value` or `name="quoted value"` parameter and the comma after it, from where the last one ended.
const PARAM = /\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)/y;

/**
 * Parses the first challenge of a WWW-Authenticate header (`Bearer realm="...",service="...",scope="..."`).
 * A header may list several challenges (`Bearer realm=..., Basic realm=...`): the parameters end
 * where the next challenge's scheme begins.
 */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const match = /^\s*([A-Za-z][A-Za-z0-9._-]*)(?:\s+(.*))?$/s.exec(header);
  if (!match) return undefined;
  const rest = match[2] ?? '';
  const params: Record<string, string> = {};
  let position = 0;
  while (position < rest.length) {
    PARAM.lastIndex = position;
    const part = PARAM.exec(rest);
    if (!part) break; // the next challenge (a scheme, not a parameter) or something unparsable
    params[part[1]!.toLowerCase()] = part[2] !== undefined ? part[2].replace(/\\(.)/g, '$1') : part[3]!;
    position = PARAM.lastIndex;
  }
  return { scheme: match[1]!.toLowerCase(), params };
}

import type { Descriptor } from '../oci/manifest.js';

/** A platform to keep from an image index: `os/architecture[/variant]`, e.g. linux/arm64, linux/arm/v7. */
export interface Platform {
  os: string;
  architecture: string;
  variant: string | undefined;
}

const COMPONENT = /^[a-z0-9_.-]+$/;

export function parsePlatform(raw: string): Platform {
  const parts = raw.trim().toLowerCase().split('/');
  if (parts.length < 2 || parts.length > 3 || !parts.every((p) => COMPONENT.test(p))) {
    throw new Error(`"${raw}" is not OS/ARCH[/VARIANT] (e.g. linux/amd64, linux/arm64, linux/arm/v7)`);
  }
  return { os: parts[0]!, architecture: parts[1]!, variant: parts[2] };
}

/** Parses a comma- or space-separated list of platforms (a repeated --platform arrives joined by commas). */
export function parsePlatforms(raw: string): Platform[] {
  const items = raw.split(/[\s,]+/).filter(Boolean);
  if (items.length === 0) throw new Error('expected at least one OS/ARCH[/VARIANT]');
  return items.map(parsePlatform);
}

export function formatPlatform(platform: Record<string, unknown> | Platform | undefined): string {
  if (!platform) return 'unknown';
  const { os, architecture, variant } = platform as Record<string, unknown>;
  return [os, architecture, variant].filter((p) => typeof p === 'string' && p !== '').join('/');
}

/** arm64 images are often labelled variant v8, or not at all; treat the two as the same platform. */
function normalVariant(architecture: string, variant: string | undefined): string | undefined {
  if (architecture === 'arm64' && (variant === undefined || variant === 'v8')) return undefined;
  return variant;
}

/** Whether an index entry's platform is one of `wanted`; a wanted platform without variant matches every variant. */
export function platformMatches(platform: Record<string, unknown> | undefined, wanted: readonly Platform[]): boolean {
  if (!platform) return false;
  const os = String(platform.os ?? '').toLowerCase();
  const architecture = String(platform.architecture ?? '').toLowerCase();
  const variant = typeof platform.variant === 'string' ? platform.variant.toLowerCase() : undefined;
  return wanted.some((w) => w.os === os && w.architecture === architecture
    && (w.variant === undefined || normalVariant(architecture, w.variant) === normalVariant(architecture, variant)));
}

const REFERENCE_TYPE = 'vnd.docker.reference.type';
const REFERENCE_DIGEST = 'vnd.docker.reference.digest';

/**
 * The entries of an index to keep: those of a wanted platform (all when `wanted` is undefined),
 * entries without a platform that are not attestations (nested indexes, artifacts), and BuildKit
 * attestation manifests of a kept image (they are small and describe it).
 */
export function selectIndexEntries(manifests: readonly Descriptor[], wanted: readonly Platform[] | undefined): Descriptor[] {
  if (!wanted) return [...manifests];
  const isAttestation = (d: Descriptor) => d.annotations?.[REFERENCE_TYPE] === 'attestation-manifest';
  const kept = manifests.filter((d) => !isAttestation(d) && (d.platform === undefined || platformMatches(d.platform, wanted)));
  const keptDigests = new Set(kept.map((d) => d.digest));
  const attestations = manifests.filter((d) => isAttestation(d) && keptDigests.has(d.annotations?.[REFERENCE_DIGEST] ?? ''));
  return [...kept, ...attestations];
}

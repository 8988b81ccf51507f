// Part sizes of S3 multipart uploads, apart from the driver: the config module reads them without
// loading the AWS SDK.

/** S3's smallest part (all but the last of a multipart upload). */
export const MIN_PART_SIZE = 5 * 1024 * 1024;

/**
 * The default part size: 10 MiB, as distribution's s3 driver. Not a multiple of 4 MiB on purpose:
 * Ceph RGW stores a part in 4 MiB stripes, and reading objects whose parts were a whole number of
 * stripes (8, 12 and 16 MiB tried) cost RGW ~20 % more CPU and made skopeo pulls of 10 x 20 MiB ~7 %
 * slower than with 5 or 10 MiB parts (measured side by side on one RGW; README "Storage on S3").
 */
export const DEFAULT_PART_SIZE = 10 * 1024 * 1024;

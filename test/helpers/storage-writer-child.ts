// A process that starts a blob write and never finishes it, for the driver suite's crash test: it
// writes `bytes` to `key` through the driver of `location`, says "written", and waits to be killed.
import { openStorageDriver } from '../../lib/storage/driver/open.js';
import { parseStorageLocation } from '../../lib/storage/driver/location.js';

const { location, key, bytes, partSize } = JSON.parse(process.argv[2]!) as { location: string; key: string; bytes: number; partSize: number };
const driver = await openStorageDriver(parseStorageLocation(location), { s3: { partSize } });
const writer = await driver.blobWriter(key);
const chunk = Buffer.alloc(1024 * 1024, 7);
for (let written = 0; written < bytes; written += chunk.length) await writer.write(chunk);
process.stdout.write('written\n');
setInterval(() => {}, 60_000);

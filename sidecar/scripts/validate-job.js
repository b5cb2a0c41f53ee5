/** Reads a job definition (JSON) on stdin; prints the SDK's verdict: {"success": bool, "errors": [...]}. */
import { validateJobDefinition } from '@nosana/sdk';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const r = validateJobDefinition(JSON.parse(Buffer.concat(chunks).toString('utf8')));
console.log(JSON.stringify({ success: r.success, errors: r.success ? [] : r.errors }));

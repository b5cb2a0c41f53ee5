/** Writes the SDK's job-definition JSON schema to schema/ (`npm run schema`); Python tests validate against it. */
import fs from 'node:fs';
import { jobSchemas } from '@nosana/sdk';

const [definition] = jobSchemas.schemas;
const out = { ...definition, components: jobSchemas.components, 'x-source': '@nosana/sdk jobSchemas' };
fs.writeFileSync(new URL('../schema/job-definition.schema.json', import.meta.url), `${JSON.stringify(out, null, 1)}\n`);

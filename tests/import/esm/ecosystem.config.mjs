// An ES-module ecosystem file (package.json "type": "module" projects use these).
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));

export default {
  apps: [
    {
      name: 'chat',
      script: join(here, 'src/index.mjs'),
      instances: 3,
      exec_mode: 'cluster',
      env: { PORT: 5000 },
      env_production: { NODE_ENV: 'production' },
    },
  ],
};

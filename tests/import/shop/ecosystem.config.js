// The shop's processes, as PM2 runs them in production: `pm2 start ecosystem.config.js --env production`.
const path = require('path');
const { ports } = require('./ports.json');

const root = path.join(__dirname, 'current');

// Every app logs to its own files under /var/log/shop.
const logs = (name) => ({
  out_file: path.join('/var/log/shop', `${name}.out.log`),
  error_file: path.join('/var/log/shop', `${name}.err.log`),
  merge_logs: true,
  log_date_format: 'YYYY-MM-DD HH:mm:ss Z',
});

function web(name, port, extra = {}) {
  return {
    name,
    script: './server.js',
    cwd: root,
    instances: 'max',
    exec_mode: 'cluster',
    node_args: ['--max-old-space-size=512'],
    env: {
      NODE_ENV: 'development',
      PORT: port,
      LOG_LEVEL: process.env.SHOP_LOG_LEVEL || 'info',
    },
    env_production: { NODE_ENV: 'production', API_URL: 'https://api.shop.example' },
    env_staging: { NODE_ENV: 'staging', API_URL: 'https://staging.shop.example' },
    wait_ready: true,
    listen_timeout: 8000,
    kill_timeout: 5000,
    max_memory_restart: '400M',
    env_file: path.join(__dirname, 'shop.env'),
    ...logs(name),
    ...extra,
  };
}

module.exports = {
  apps: [
    web('storefront', ports.storefront),
    web('admin', ports.admin, { instances: 2, shutdown_with_message: true }),
    {
      name: 'mailer',
      script: 'workers/mailer.js',
      cwd: root,
      autorestart: true,
      exp_backoff_restart_delay: 100,
      max_restarts: 20,
      min_uptime: '30s',
      cron_restart: '0 4 * * *',
      env: { QUEUE: 'mail' },
      env_production: { SMTP_HOST: 'smtp.internal' },
      ...logs('mailer'),
    },
  ],

  deploy: {
    production: {
      user: 'deploy',
      host: ['shop1.example'],
      ref: 'origin/main',
      repo: 'git@git.example:shop.git',
      path: '/srv/shop',
      env: { SHOP_REGION: 'eu-west' },
      'post-deploy': 'npm ci && pm2 reload ecosystem.config.js --env production',
    },
  },
};

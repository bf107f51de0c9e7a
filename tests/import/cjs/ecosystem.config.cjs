// One Express app in cluster mode that takes its port from the command line of `pm2 start`
// (`PORT=7000 pm2 start ecosystem.config.cjs`), so the file does not say it.
const common = { exec_mode: 'cluster', instances: 4, kill_timeout: 3000 };

module.exports = {
  apps: [Object.assign({ name: 'express-api', script: 'bin/www' , interpreter: 'node' }, common)],
};

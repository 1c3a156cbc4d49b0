// pm2 start pm2.config.js            (MINER_CONFIG picks the miner YAML; default: the production one)
// pm2 logs sn72-miner ; pm2 restart sn72-miner ; pm2 stop sn72-miner ; pm2 save && pm2 startup (reboots)
const os = require("os");
const path = require("path");
const root = __dirname;
// One stream: the miner writes every line (timestamped, no colour off a terminal) to stderr, and pm2
// writes both of its streams into this one file, in pm2's own folder (PM2_HOME, ~/.pm2 by default).
// The miner also keeps its own rotated log (logs.file).
const pm2Home = process.env.PM2_HOME || path.join(os.homedir(), ".pm2");
const pm2Log = path.join(pm2Home, "logs", "sn72-miner.log");

module.exports = {
  apps: [
    {
      name: "sn72-miner",
      cwd: root,
      // The project's own virtualenv interpreter (created by the README's set-up command), through
      // scripts/pm2_backoff.py: it waits out the restart back-off, then becomes the miner (same pid).
      script: path.join(root, ".venv", "bin", "python"),
      args: [path.join(root, "scripts", "pm2_backoff.py"), "-m", "neurons.miner",
             "--config", process.env.MINER_CONFIG || "config/miner.production.yaml"],
      interpreter: "none",
      autorestart: true,
      // Exit codes (docs/operations.md): only 2, a configuration to fix, is not restarted (shown "stopped": fix
      // it, then `pm2 restart sn72-miner`). Everything else is: 1 (a crash), 70 (device context lost), 75 (a
      // drain-restart the miner asked for), and 0, which is how pm2 reports a death by a signal (SIGKILL from
      // the OOM killer, SIGSEGV, SIGHUP before READY; God.js `code || 0`) as well as the miner's exit after a
      // drain on a SIGTERM/SIGINT that did not come from pm2. `pm2 stop` is never restarted, whatever the code.
      stop_exit_codes: [2],
      // No restart_delay / exp_backoff_restart_delay: with either set, pm2 7 shows an exit 2 as "waiting
      // restart" for good. pm2 restarts at once and scripts/pm2_backoff.py waits: 1 s, then 1.5 times longer
      // after each run shorter than 30 s (at most 15 s); none after exit 75.
      // Longer than the miner's drain (drain_timeout_s, 15 s by default) plus engine shutdown.
      kill_timeout: 30000,
      out_file: pm2Log,
      error_file: pm2Log,
      time: false, // the miner stamps each line itself (its start-up `error:` lines too, under pm2)
      env: {
        PYTHONUNBUFFERED: "1",
        HF_HUB_OFFLINE: "1", // models are fetched beforehand with sn72-download-models
        YOLO_OFFLINE: "1",
        TOKENIZERS_PARALLELISM: "false",
      },
    },
  ],
};

// pm2 start pm2.config.js            (MINER_CONFIG picks the miner YAML; default: the production one)
// pm2 logs sn72-miner ; pm2 restart sn72-miner ; pm2 stop sn72-miner ; pm2 save && pm2 startup (reboots)
const os = require("os");
const path = require("path");
const root = __dirname;
// One stream: the miner writes every line (timestamped, no colour off a terminal) to stderr, and pm2
// writes both of its streams into this one file. The miner also keeps its own rotated log (logs.file).
const pm2Log = path.join(os.homedir(), ".pm2", "logs", "sn72-miner.log"); // pm2's own log folder

module.exports = {
  apps: [
    {
      name: "sn72-miner",
      cwd: root,
      // The project's own virtualenv interpreter (created by the README's set-up command).
      script: path.join(root, ".venv", "bin", "python"),
      args: ["-m", "neurons.miner", "--config", process.env.MINER_CONFIG || "config/miner.production.yaml"],
      interpreter: "none",
      autorestart: true,
      // Exit codes (README, Operations): 0 stopped on purpose, 2 a configuration to fix: neither is restarted
      // (fix it, then `pm2 restart sn72-miner`). 70 (device context lost) and 1 (any other crash) are
      // restarted, waiting 1 s, then 1.5 times longer after each quick failure (pm2 caps it at 15 s).
      stop_exit_codes: [0, 2],
      exp_backoff_restart_delay: 1000,
      // Longer than the miner's drain (drain_timeout_s, 15 s by default) plus engine shutdown.
      kill_timeout: 30000,
      out_file: pm2Log,
      error_file: pm2Log,
      time: false, // the miner stamps each line itself: one timestamp per line
      env: {
        PYTHONUNBUFFERED: "1",
        HF_HUB_OFFLINE: "1", // models are fetched beforehand with sn72-download-models
        YOLO_OFFLINE: "1",
        TOKENIZERS_PARALLELISM: "false",
      },
    },
  ],
};

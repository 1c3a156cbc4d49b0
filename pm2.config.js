// pm2 start pm2.config.js            (edit MINER_CONFIG or the args below for your wallet and cascade)
// pm2 logs sn72-miner ; pm2 restart sn72-miner ; pm2 stop sn72-miner
const path = require("path");
const root = __dirname;

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
      // A dead engine (CUDA context lost) exits the process on purpose: pm2 brings it back.
      max_restarts: 50,
      min_uptime: "60s",
      restart_delay: 5000,
      // Longer than the miner's drain (drain_timeout_s, 15 s by default) plus engine shutdown.
      kill_timeout: 30000,
      env: {
        PYTHONUNBUFFERED: "1",
        HF_HUB_OFFLINE: "1", // models are fetched beforehand with scripts/download_models.py
        YOLO_OFFLINE: "1",
        TOKENIZERS_PARALLELISM: "false",
      },
      merge_logs: true,
      time: true,
    },
  ],
};

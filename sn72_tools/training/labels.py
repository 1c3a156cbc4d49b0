"""The two classes as the subnet's baseline classifier names them: what a trained or a test model calls its outputs."""

ROADWORK_LABELS = {0: "None", 1: "Roadwork"}

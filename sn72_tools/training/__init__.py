"""Offline fine-tuning of the `hf_classifier` expert on labelled images (`sn72-train`).

Nothing on the request path (neurons/miner.py -> cascade/engine.py -> experts) imports this package. It
reads the eval tool's labelled sets (sn72_tools/evaluation/datasets.py), trains with transformers' `Trainer`
on the pixels the miner's own preprocessing gives (cascade/experts/preprocess.py), and judges the result
with the eval tool's recorder and report (sn72_tools/evaluation). Importing the package is cheap: each
module imports torch and transformers itself.
"""

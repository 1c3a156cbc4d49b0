"""Offline tools over labelled data: evaluate a cascade the way validators score it, and fit it to that score.

Nothing on the request path (neurons/miner.py -> cascade/engine.py -> experts) imports this package;
`sn72-eval` (`python -m sn72_tools.evaluation.cli`) is the way in. Importing the package itself is
cheap: each module imports its heavy libraries (scikit-learn, matplotlib, datasets) itself.
"""

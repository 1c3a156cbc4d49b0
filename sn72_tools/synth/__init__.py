"""sn72-synth: labelled SDXL images like the validators' synthetic challenges (docs/synth.md).

prompts.py (templates, labels), plan.py (what image i is), pipelines.py (diffusers), manifest.py (the record,
atomic writes, resume), run.py (the loop), cli.py (the entry point).
"""

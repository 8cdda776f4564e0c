"""Curriculum learning: difficulty scores (scoring.py), pacing functions (pacing.py), the step-level
batch sampler (sampler.py), its Lightning callback (callback.py) and per-stage assembly (builder.py)."""

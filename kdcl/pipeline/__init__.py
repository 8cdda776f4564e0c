"""Stages: the plan (config → list of stages), one stage's run, the run manifest, the runner."""

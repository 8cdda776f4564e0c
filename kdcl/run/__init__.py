"""One run: the checks that need models, data or Lightning (validate.py), the plan (config → list of stages),
one stage's run, the run manifest, the runner, the run directory's lock, how the process was launched, sweeps."""

"""A finished run's models after training: found and rebuilt (locate.py), exported (export.py), combined
into a student → teacher cascade (cascade.py, cascade_eval.py)."""

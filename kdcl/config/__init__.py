"""The config: its schema (schema.py), where conf/ is and how Hydra composes it (compose.py), and the
checks that need neither torch nor Lightning (checks.py). Keep this file empty of imports: a bad key is
refused before torch is loaded."""

"""Teachers' stored outputs: logits of each example (outputs.py) and replayable augmented views (views.py)."""

"""Training one stage with Lightning: the LightningModule, the optimizer, callbacks, the Trainer factory
and atomic checkpoints."""

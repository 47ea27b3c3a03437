"""pi0 / pi0.5: configs, modules, checkpoints, tokenization and normalization."""

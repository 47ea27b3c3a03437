"""pi0 / pi0.5 models: configs, modules, checkpoints, tokenization and normalization."""

"""Training the project's own pi0.5 policies (not on the deployment path)."""

"""Model families (models/<family>/), their shared parts (SigLIP, RoPE) and the family table."""

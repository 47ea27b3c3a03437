"""The `quantvla` command."""

"""The published language: one file per module, messages only."""

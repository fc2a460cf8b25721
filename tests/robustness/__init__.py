"""Robustness: generated and hostile input against every operation."""

"""Comparative studies (`python cli.py study ...`): data scale, decoding ablations, DFM variants."""

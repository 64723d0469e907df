"""Small helpers shared by every part: atomic file writes, result tables."""

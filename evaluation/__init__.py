"""Rollout and evaluation: one episode loop, results that resume, a live dashboard, videos, charts."""

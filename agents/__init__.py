"""Agents: policies behind one `act(obs)` / `reset()` interface."""

"""CALVIN re-created in MuJoCo: chains, task oracle, play-table env, experts, calvin_env adapter."""

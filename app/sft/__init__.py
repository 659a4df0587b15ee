"""Supervised warm start (RLHF step 1) on the same model stack as PPO."""

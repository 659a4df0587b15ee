"""solver-ppo: PPO for math-modeling language models, rewarded by a SCIP-based evaluator."""

"""PPO: pure loss math (losses), KL controllers (kl), the Rollout record (rollout), the LightningModule (module)."""

"""RLHF on the shared training engine (spec rlhf.md): pure losses (``losses``), the reward
model and its trainer (``reward``), DPO and its relatives (``dpo``), PPO and GRPO (``ppo``).

Import-light: the trainer classes are imported from their modules by the trainer registry.
"""

"""PSN-GRPO's parts as functions the training loop calls: advantages, TIS weights, the clipped loss, self-certainty
and pass@k (algo.py, pure math), the seeded noise on the LoRA weights and its bit-exact restore (noise.py), the σ
controller (sigma_control.py) and the mechanism's measures (mechanism.py). The loop itself is training/train.py.
"""

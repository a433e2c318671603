"""The training loop: `Trainer.step` is the paper's Algorithm 1, each labelled phase a call or two (train.py), a
step's batch and what its rows earn (batch.py), the learner's log-probs and update (learner.py), a step's metrics
(metrics.py) and where they go (trackers.py).
"""

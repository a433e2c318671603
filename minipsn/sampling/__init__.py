"""Where rollouts come from: the engine holds the weights the perturbed policy samples from (engine.py; dense_copy.py,
the fast engine's copy of the base), and the decode loop turns prompts into completions with their sampler
log-probs (rollout.py; static_decode.py, its static cache on CUDA). Above method/, whose noise the engine applies.
"""

"""A run's plumbing, the bottom of the kit with verify/: its config (config.py, one frozen dataclass per concern;
checks.py, the values each setting may take; presets.py, the named overrides and the local models' recipes;
overrides.py, how a Config is built from them), its folder (folders.py, checkpoint.py), its processes
(distributed.py, oom.py) and what it prints (printlog.py, script.py). These modules import nothing of the kit but
each other and verify/.
"""

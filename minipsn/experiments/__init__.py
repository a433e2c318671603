"""What the kit measures with training and evaluation: `compare`'s grid and its paired intervals (compare.py;
jobs.py, its jobs, run one by one or in workers; paired.py, stats.py), the σ calibration (calibrate.py), headroom
and the ceiling subset (headroom.py, subset.py), the noise-only pre-flight (preflight.py), the time planner
(planner.py), the frontier (frontier.py) and the plots (plot.py). The top of the kit with bench/; cli.py calls
into it.
"""

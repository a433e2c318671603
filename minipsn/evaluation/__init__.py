"""How a policy is measured: pass@k on held-out problems (evaluate.py, also called by the trainer for its held-out
pass@1), a problem's samples scored (scoring.py), the report's table (reports.py), and what made a result, checked
before a stored one is reused (provenance.py).
"""

"""What a run learns on: the problems (data.py, the bundled benchmarks and prompts; synthetic.py; user_data.py, your
own data; problems.py, `load_problems` over all of them) and the models (models.py, the NF4 base with its LoRA
adapter; local_models.py and sft.py, the small models the kit builds and ships). Above run/ and verify/.
"""

"""`python cli.py config`: every field with its help (the comment above it in config.py), values resolved."""
import os
import subprocess
import sys

from minipsn.run.config import Config
from minipsn.run.overrides import field_help, flatten
from minipsn.run.presets import METHODS, PRESETS
from tests.conftest import REPO


def _table(*args):
    env = {**os.environ, "COLUMNS": "400"}  # one line per row: rich wraps cells to the terminal's width
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "config", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in proc.stdout.splitlines() if line.startswith("│")]
    return {key: (value, text) for key, value, text in cells if key}


def test_every_field_has_its_comment_as_help():
    keys = set(flatten(Config().to_dict()))
    help_ = field_help()
    assert set(help_) == keys
    assert not [k for k, v in help_.items() if not v], "a config field has no comment above it"
    assert help_["grpo.group_size"] == "G: completions per prompt"
    assert help_["noise.sigma"].startswith("σ: std of the noise") and "calibrate" in help_["noise.sigma"]  # two lines


def test_config_command_prints_every_field_resolved_for_model_and_method():
    rows = _table("--model", "tiny", "--method", "grpo", "--set", "run.log_to=jsonl,tensorboard")
    assert set(rows) == set(field_help())
    assert all(text for _, text in rows.values())
    assert rows["noise.sigma"][0] == "0.0" and rows["model.name"][0] == "tiny"
    for key, value in {**PRESETS["tiny"], **METHODS["grpo"]}.items():
        shown = rows[key][0]
        assert shown == (str(value).lower() if isinstance(value, bool) else str(value)), key
    assert rows["run.log_to"][0] == "jsonl,tensorboard"
    # help text is printed as written: brackets are not taken for rich markup
    assert "[sigma_min, sigma_max]" in rows["noise.sigma_min"][1]
    # without --method: the model's preset over the defaults (tiny is also the default model)
    assert _table()["noise.sigma"][0] == str(PRESETS["tiny"].get("noise.sigma", Config().noise.sigma))


def test_config_command_refuses_a_bad_method_in_one_line():
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "config", "--method", "gpro"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown method 'gpro'")

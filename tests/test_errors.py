"""Bad input: one line that says what to change, exit code 2, no traceback (unless --debug)."""
import pytest
from typer.testing import CliRunner

from tests.test_train import cli


def invoke(*args):
    """The CLI in-process (no interpreter start-up): (exit code, stderr)."""
    from cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "qwen-1.5"], "did you mean qwen-1.5b"),
    (["--model", "tiny", "--sigma", "-1"], "noise.sigma"),
    (["--model", "tiny", "--set", "grpo.group_size=1"], "group_size (G) must be >= 2"),
    (["--model", "tiny", "--set", "grpo.tis_cap=0"], "tis_cap (C) must be > 0"),
    (["--model", "tiny", "--set", "noise.sigmaa=0.1"], "did you mean noise.sigma"),
    (["--model", "tiny", "--set", "grpo.group_size=eight"], "expects int"),
    (["--model", "tiny", "--set", "sigma"], "section.key=value"),
    (["--model", "tiny", "--config", "missing.toml"], "config file not found"),
    (["--model", "tiny", "--method", "psn-magic"], "unknown method"),
    (["--model", "tiny", "--dataset", "gsm9k"], "gsm8k"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    code, err = invoke("train", *args, "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    proc = cli("train", "--model", "tiny", "--sigma", "-1", "--debug", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_malformed_jsonl_names_file_and_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k_train.jsonl").write_text('{"question": "1+1?", "final": "2", "answer": "#### 2"}\n{broken\n')
    code, err = invoke("train", "--model", "tiny", "--dataset", "gsm8k", "--data-dir", str(data), "--out", str(tmp_path / "r"))
    assert code == 2 and "gsm8k_train.jsonl:2" in err, err


def test_prompt_longer_than_the_context_is_an_error(tmp_path):
    code, err = invoke("train", "--model", "tiny", "--steps", "1", "--set", "model.max_prompt_tokens=5",
                       "--out", str(tmp_path / "r"))
    assert code == 2 and "max_prompt_tokens" in err, err


def test_missing_bitsandbytes_loads_full_precision_with_a_notice(monkeypatch, capsys):
    import sys

    from minipsn.config import ModelConfig
    from minipsn.models import load_base

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    model, _ = load_base(ModelConfig(name="tiny"))
    assert "bitsandbytes is not usable" in capsys.readouterr().out
    assert not getattr(model, "is_loaded_in_4bit", False)


def test_quantize_none_says_so(capsys):
    from minipsn.config import ModelConfig
    from minipsn.models import load_base

    model, _ = load_base(ModelConfig(name="tiny", quantize="none"))
    assert "full precision" in capsys.readouterr().out and not getattr(model, "is_loaded_in_4bit", False)


def test_nf4_on_cpu_is_the_real_4bit_path():
    import bitsandbytes as bnb

    from minipsn.config import ModelConfig
    from minipsn.models import load_base

    model, _ = load_base(ModelConfig(name="tiny"))
    assert model.is_loaded_in_4bit and any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())

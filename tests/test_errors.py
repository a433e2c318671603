"""Bad input: one line that says what to change, exit code 2, no traceback (unless --debug); a hub model that
cannot load; Ctrl-C: one line and exit code 130."""
from types import SimpleNamespace

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

    from minipsn.run.config import ModelConfig
    from minipsn.tasks.models import load_base

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    model, _ = load_base(ModelConfig(name="tiny"))
    assert "bitsandbytes is not usable" in capsys.readouterr().out
    assert not getattr(model, "is_loaded_in_4bit", False)


def test_quantize_none_says_so(capsys):
    from minipsn.run.config import ModelConfig
    from minipsn.tasks.models import load_base

    model, _ = load_base(ModelConfig(name="tiny", quantize="none"))
    assert "full precision" in capsys.readouterr().out and not getattr(model, "is_loaded_in_4bit", False)


def test_nf4_on_cpu_is_the_real_4bit_path():
    import bitsandbytes as bnb

    from minipsn.run.config import ModelConfig
    from minipsn.tasks.models import load_base

    model, _ = load_base(ModelConfig(name="tiny"))
    assert model.is_loaded_in_4bit and any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


# ---------------------------------------------------------------- a hub model that cannot be loaded


def test_an_uncached_hub_model_offline_is_one_line_and_leaves_no_run_folder(tmp_path):
    """HF_HUB_OFFLINE=1 (as `make test` runs): the model is named, offline is said, what to do is said,
    at once and before the run folder is made."""
    out = tmp_path / "run"
    for command in (["train", "--out", str(out)], ["eval", "--benchmarks", "synthetic", "--out", str(out)]):
        proc = cli(*command, "--model", "no-such-org/no-such-model", check=False, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1 and line.startswith("error: model no-such-org/no-such-model"), line
        assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in line
        assert not out.exists()


@pytest.mark.parametrize("error, says", [("connect", "the Hugging Face hub cannot be reached"),
                                         ("missing", "was not found on the Hugging Face hub")])
def test_an_uncached_hub_model_online_is_checked_with_one_request(error, says, monkeypatch):
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    from minipsn.tasks.models import check_available

    calls = []

    def model_info(self, repo, timeout=None):
        calls.append((repo, timeout))
        if error == "connect":  # the hub client's own error, as a dead network raises it
            raise HfHubHTTPError.__bases__[0]("[Errno -2] Name or service not known")
        response = SimpleNamespace(headers={}, status_code=404, request=None)
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "model_info", model_info)
    with pytest.raises(ValueError, match=rf"^model qwen-1.5b \(Qwen/Qwen2.5-1.5B-Instruct\) .*{says}"):
        check_available("qwen-1.5b")
    assert calls == [("Qwen/Qwen2.5-1.5B-Instruct", 10)]  # one request, with a limit: no minute of retries
    with pytest.raises(ValueError, match="model folder ./no/such/folder does not exist"):
        check_available("./no/such/folder")
    check_available("tiny")  # local models are not looked up


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_while_the_model_loads_exits_130_saying_there_is_no_checkpoint(tmp_path, monkeypatch):
    def load_base(*a, **k):
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of from_pretrained
    monkeypatch.setattr("minipsn.tasks.models.load_base", load_base)
    out = tmp_path / "run"
    code, err = invoke("train", "--model", "tiny", "--out", str(out))
    assert code == 130
    assert err.strip() == (f"interrupted; {out} has no checkpoint yet: python cli.py train --resume {out} "
                           "starts it again from step 0")

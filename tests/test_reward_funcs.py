"""Reward functions (rewards/funcs.py): the kit's signature and TRL's, weighted sums with None as TRL has it, the
keyword arguments a TRL function receives, specs from the command line, each error's one line, and what a resume
checks. Hand-computed numbers; the runs at the end check metrics.jsonl and samples.jsonl of a few tiny steps."""
import functools
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from minipsn.method import algo
from minipsn.rewards import funcs as reward_funcs
from minipsn.run.config import GRPOConfig, RewardConfig
from minipsn.run.overrides import build_config
from minipsn.training.batch import advantages, score
from tests.conftest import REPO
from tests.test_train import ENV

TEXTS = ["so \\boxed{3}", "3 + 1 = 4, \\boxed{4}", "the sum is 3", "\\boxed{3} and on and on"]
CUT = [False, False, False, True]  # the verifier: [1, 0, 1, 0] (the last number counts; a cut completion is wrong)
RECS = [{"id": f"r{i}", "problem": "p", "answer": "3"} for i in range(4)]


def rollouts(texts=TEXTS, truncated=CUT):
    ids = torch.tensor([[5, 6, 7]] * len(texts))
    return SimpleNamespace(texts=texts, truncated=torch.tensor(truncated), completion_ids=ids,
                           completion_mask=torch.tensor([[1, 1, 0]] * len(texts)))


def boxed(completions, **kwargs):  # TRL's kind; None: no reward from it for a completion without a box
    return [1.0 if "\\boxed" in c else None for c in completions]


def half(completions, records, truncated):  # the kit's kind
    return [0.5] * len(completions)


def test_which_signature_a_function_has():
    assert reward_funcs.takes_keywords(boxed, "boxed") is True
    assert reward_funcs.takes_keywords(half, "half") is False
    assert reward_funcs.takes_keywords(lambda c, r, t: c, "l") is False
    assert reward_funcs.takes_keywords(functools.partial(boxed, scale=2), "p") is True

    class Scorer:
        def __call__(self, completions, **kwargs):
            return [0.0] * len(completions)
    funcs = reward_funcs.resolve([Scorer(), functools.partial(boxed)], RewardConfig())
    assert funcs.names == ["Scorer", "boxed"] and [f.trl for f in funcs.funcs] == [True, True]
    with pytest.raises(ValueError, match=r"reward function two\(a, b\) takes neither the kit's arguments"):
        reward_funcs.takes_keywords(lambda a, b: a, "two")


def test_a_weighted_list_with_none_by_hand():
    stats = {}
    rewards, correct = score(["verifier", boxed, half], rollouts(), RECS, RewardConfig(weights=(1.0, 2.0, -1.0)),
                             ["P"] * 4, stats)
    assert correct.tolist() == [1.0, 0.0, 1.0, 0.0]
    # 1·verifier + 2·boxed − 0.5, boxed None on row 2 (left out of the sum)
    assert rewards.tolist() == [1 + 2 - 0.5, 0 + 2 - 0.5, 1 - 0.5, 0 + 2 - 0.5]
    assert stats == {"reward/verifier": 0.5, "reward/boxed": 1.0, "reward/half": 0.5, "reward/unscored_frac": 0.0}
    assert score([half], rollouts(), RECS, RewardConfig())[0].tolist() == [0.5] * 4  # one function: its reward
    shaped = RewardConfig(format_weight=0.5, truncated_reward=-1.0, functions=("verifier",))
    assert score(None, rollouts(), RECS, shaped)[0].tolist() == [1.5, 0.5, 1.0, -0.5]  # the verifier's own rules


def test_a_row_no_function_scored_leaves_its_group_as_in_trl():
    stats = {}
    rewards, correct = score([boxed], rollouts(), RECS, RewardConfig(), None, stats)
    assert rewards[2].isnan() and stats["reward/unscored_frac"] == 0.25 and stats["reward/boxed"] == 1.0
    r = torch.tensor([[1.0, float("nan"), 0.0, 1.0], [float("nan")] * 4])
    adv = advantages(r, torch.zeros(2, 4), GRPOConfig(group_size=4))
    scored = algo.group_advantages(torch.tensor([[1.0, 0.0, 1.0]]))[0]  # mean 2/3 and std of the three scored
    assert torch.allclose(adv[0], torch.tensor([scored[0], 0.0, scored[1], scored[2]]))
    assert adv[0, 0].item() == pytest.approx(0.7071, abs=1e-4) and adv[1].tolist() == [0.0] * 4


def test_what_a_trl_function_receives():
    seen = {}

    def spy(completions, prompts, completion_ids, truncated, **columns):
        seen.update(completions=completions, prompts=prompts, ids=completion_ids, truncated=truncated, **columns)
        return [0.0] * len(completions)
    own = [{"id": "d-0", "problem": "p", "answer": "3", "columns": {"q": "p", "gold": 3, "prompt": "x"}},
           {"id": "d-1", "problem": "p", "answer": "3", "columns": {"q": "p", "gold": 3, "hint": "h"}}]
    score([spy], rollouts(TEXTS[:2], CUT[:2]), own, RewardConfig(), ["P0", "P1"])
    assert seen["completions"] == TEXTS[:2] and seen["prompts"] == ["P0", "P1"] and seen["ids"] == [[5, 6], [5, 6]]
    assert seen["truncated"] == [False, False] and seen["gold"] == [3, 3] and seen["hint"] == [None, "h"]
    assert "prompt" not in seen and "answer" not in seen  # the row's columns as they are; TRL drops `prompt`
    seen.clear()
    score([spy], rollouts(TEXTS[:1], CUT[:1]), RECS[:1], RewardConfig(), ["P0"])
    assert seen["answer"] == ["3"] and seen["problem"] == ["p"] and seen["id"] == ["r0"]  # a bundled record's fields


@pytest.mark.parametrize("fn, message", [
    (lambda completions, **k: 1 / 0, r"^reward function <lambda> raised ZeroDivisionError: division by zero$"),
    (lambda completions, **k: [1.0], r"returned 1 rewards for 4 completions; return one per completion"),
    (lambda completions, **k: 1.0, r"returned a float; return a list of 4 numbers \(None: no reward"),
    (lambda completions, **k: ["1"] * 4, r"returned '1' for completion 0; return a finite number or None"),
    (lambda completions, **k: [float("inf")] * 4, r"returned inf for completion 0"),
])
def test_a_bad_reward_function_fails_in_one_line_naming_it(fn, message):
    with pytest.raises(reward_funcs.RewardError, match=message):
        score([fn], rollouts(), RECS, RewardConfig())


def test_specs_from_a_module_a_file_or_the_verifier(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def short(completions, **kw):\n    return [1.0] * len(completions)\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.py").write_text("import sys\ndef long(completions, records, truncated):\n"
                                              "    return [2.0] * len(completions)\n"
                                              "if __name__ == '__main__':\n    sys.exit('ran as a script')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    funcs = reward_funcs.resolve(None, RewardConfig(functions=("my_rewards:short", "sub/more.py:long", "verifier")))
    assert funcs.names == ["short", "long", "verifier"] and funcs.weights == (1.0, 1.0, 1.0)
    assert [f.trl for f in funcs.funcs] == [True, False, False]
    for spec, message in (("short", r"is not module:function, path/file.py:function or verifier"),
                          ("nomod:f", r"no module nomod to import .* give its file: path/to/nomod.py:f"),
                          ("my_rewards:shrt", r"my_rewards has no function 'shrt' .*did you mean short\?"),
                          ("sub/none.py:f", r"reward file sub/none.py not found")):
        with pytest.raises(reward_funcs.RewardError, match=message):
            reward_funcs.load_spec(spec)


def test_reward_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match=r"reward.weights has 1 weights for 2 reward.functions"):
        RewardConfig(functions=("verifier", "m:f"), weights=(1.0,))
    with pytest.raises(ValueError, match=r"reward.weights has 1 weights for 2 reward functions \(boxed, half\)"):
        reward_funcs.resolve([boxed, half], RewardConfig(weights=(1.0,)))
    with pytest.raises(ValueError, match=r"reward.weights needs reward functions"):
        reward_funcs.resolve(None, RewardConfig(weights=(1.0,)))
    with pytest.raises(ValueError, match=r"reward.functions \(--reward\) or from train\(reward_fn=...\), not both"):
        reward_funcs.resolve(boxed, RewardConfig(functions=("verifier",)))
    with pytest.raises(ValueError, match=r"name 'boxed' cannot be logged as reward/boxed \(two reward functions"):
        reward_funcs.resolve([boxed, functools.partial(boxed)], RewardConfig())

    def accuracy(completions, **kwargs):
        return [0.0] * len(completions)
    with pytest.raises(ValueError, match=r"the kit logs reward/accuracy itself"):
        reward_funcs.resolve([accuracy], RewardConfig())
    cfg = build_config(sets={"reward.functions": "verifier,m:f", "reward.weights": "1, 0.5"})
    assert cfg.reward.weights == (1.0, 0.5)


def test_a_resume_refuses_other_reward_functions(tmp_path):
    funcs = reward_funcs.resolve(["verifier", boxed], RewardConfig(weights=(1.0, 0.5)))
    reward_funcs.check_resume(tmp_path, funcs, resume=False)
    assert json.loads((tmp_path / "rewards.json").read_text()) == {"functions": ["verifier", "boxed"],
                                                                   "weights": [1.0, 0.5]}
    reward_funcs.check_resume(tmp_path, funcs, resume=True)  # the same: fine
    with pytest.raises(ValueError, match=r"trained with the reward functions verifier, boxed; this resume has half"):
        reward_funcs.check_resume(tmp_path, reward_funcs.resolve(half, RewardConfig()), resume=True)
    with pytest.raises(ValueError, match=r"this resume has verifier: pass the same ones"):
        reward_funcs.check_resume(tmp_path, None, resume=True)  # the default reward is named verifier


# ---- a few steps of tiny ------------------------------------------------------------------------

def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def small(out, **sets):
    return {"run.out": str(out), "run.steps": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4",
            "rollout.max_new_tokens": "24", "run.log_samples": "8", **sets}


def cli_in(folder, out, reward: str) -> subprocess.CompletedProcess:
    """`train --reward verifier --reward REWARD --set reward.weights=1,2`, run from `folder`."""
    sets = [x for k, v in small(out).items() for x in ("--set", f"{k}={v}")]
    args = [sys.executable, str(REPO / "cli.py"), "train", "--model", "tiny", "--reward", "verifier",
            "--reward", reward, "--set", "reward.weights=1,2", *sets]
    return subprocess.run(args, cwd=folder, env=ENV, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_cli_reward_module_function_with_weights(tmp_path, tiny_model):
    """`--reward verifier --reward my_rewards:has_box --set reward.weights=1,2` from the folder that holds the module:
    every logged row's reward is 1·correct + 2·has_box, and the metrics are its means (all rows are logged)."""
    (tmp_path / "my_rewards.py").write_text("def has_box(completions, **kwargs):\n"
                                            "    return [0.25 if '\\\\boxed' in c else 0.0 for c in completions]\n")
    proc = cli_in(tmp_path, tmp_path / "run", "my_rewards:has_box")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for m in lines(tmp_path / "run" / "metrics.jsonl"):
        rows = [s for s in lines(tmp_path / "run" / "samples.jsonl") if s["step"] == m["step"]]
        assert len(rows) == 8
        for s in rows:
            assert s["reward"] == pytest.approx(float(s["correct"]) + 2 * (0.25 if "\\boxed" in s["completion"] else 0))
        assert m["reward/has_box"] == pytest.approx(sum(0.25 * ("\\boxed" in s["completion"]) for s in rows) / 8)
        assert m["reward/verifier"] == m["reward/accuracy"]
        assert m["reward/mean"] == pytest.approx(m["reward/verifier"] + 2 * m["reward/has_box"], abs=1e-6)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["reward"]["functions"] == ["verifier",
                                                                                               "my_rewards:has_box"]
    (tmp_path / "boom.py").write_text("def explode(completions, **kwargs):\n    raise KeyError('solution')\n")
    proc = cli_in(tmp_path, tmp_path / "boom", "boom.py:explode")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: reward function explode raised KeyError: 'solution'"


def test_none_rewards_in_a_run_and_its_resume(tmp_path, tiny_model):
    """A TRL function that scores only some completions (None for the rest): each row's reward is the verifier's
    plus its own where it gave one; reward/<name> is its mean over the rows it scored. A resume must bring it."""
    from minipsn.training.train import Trainer, train

    def even_len(completions, **kwargs):
        return [1.0 if len(c) % 2 == 0 else None for c in completions]
    cfg = build_config(model="tiny", sets=small(tmp_path / "run", **{"reward.weights": "1,3"}))
    run, scored = train(cfg, reward_fn=["verifier", even_len]), []
    for m in lines(run / "metrics.jsonl"):
        rows = [s for s in lines(run / "samples.jsonl") if s["step"] == m["step"]]
        for s in rows:
            assert s["reward"] == pytest.approx(float(s["correct"]) + 3 * (len(s["completion"]) % 2 == 0))
        scored += [len(s["completion"]) % 2 == 0 for s in rows]
        assert m.get("reward/even_len", 1.0) == 1.0 and m["reward/unscored_frac"] == 0.0  # its mean where it scored
    assert 0 < sum(scored) < len(scored)  # None on some rows, not counted as 0
    with pytest.raises(ValueError, match=r"reward functions verifier, even_len; this resume has verifier: pass the"):
        Trainer(build_config(model="tiny", sets=small(run, **{"run.steps": "3"})), reward_fn=["verifier"], resume=True)

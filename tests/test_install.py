"""The package installs: `pip install -e .` in a fresh venv gives a `minipsn` console script that trains."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO


def _run(args, cwd, env, timeout):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_fresh_venv_installs_the_package_and_its_console_script_trains(tmp_path, tiny_model):
    """torch and the other dependencies come from the system (--system-site-packages), as `make install`
    leaves them; --no-build-isolation builds with the installed setuptools, so nothing is downloaded.
    The script runs outside the checkout, so `minipsn` is found as the installed package."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # --without-pip: the system's pip (seen through the system site-packages) installs into the venv
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, env, 300)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(REPO)], tmp_path, env, 600)
    where = _run([str(python), "-c", "import minipsn, cli; print(minipsn.__file__)"], tmp_path, env, 120)
    assert where.stdout.strip() == str(REPO / "minipsn" / "__init__.py")
    out = tmp_path / "run"
    proc = _run([str(venv / "bin" / "minipsn"), "train", "--model", "tiny", "--steps", "1", "--out", str(out)],
                tmp_path, env, 1800)
    assert "step 1/1" in proc.stdout and f"run folder: {out}" in proc.stdout
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "samples.jsonl").is_file()

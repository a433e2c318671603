"""The package installs the way the README says: `make install` into a fresh venv gives a `minipsn` console
script that trains. It works whether pytest runs under the system python or inside a virtualenv."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO


def _run(args, cwd, env, timeout):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _site_dirs() -> list[str]:
    """The package folders of the interpreter running the tests: a virtualenv's own, or the system's.
    (`venv --system-site-packages` would give the *base* interpreter's instead, which inside a
    virtualenv is not where `make install` put anything.)"""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


@pytest.mark.slow
def test_make_install_into_a_fresh_venv_gives_a_console_script_that_trains(tmp_path, tiny_model):
    """`make install PY=venv/bin/python`, as a user runs it, with nothing downloaded: the venv sees this
    interpreter's packages through a .pth file (processed like a site folder, so their own .pth files
    work too), so pip finds every requirement already satisfied; PIP_NO_INDEX makes any download an
    error. TORCH is this interpreter's exact torch, and the package builds without build isolation
    (requirements-dev.txt brings setuptools). The script runs outside the checkout, so `minipsn` is
    found as the installed package, the checkout's own, not another one the base interpreter holds."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INDEX="1", PIP_NO_INPUT="1")
    # --without-pip: this interpreter's pip, seen through the .pth file, installs into the venv
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env, 300)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env, 60)
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_dirs()]
    Path(site.stdout.strip(), "zz_test_parent_site.pth").write_text("\n".join(lines) + "\n")  # after the venv's own

    make = _run(["make", "-C", str(REPO), "install", f"PY={python}", f"TORCH=torch=={torch.__version__}"],
                tmp_path, env, 900)
    assert "Successfully installed minipsn" in make.stdout, make.stdout[-2000:]
    where = _run([str(python), "-c", "import minipsn, cli; print(minipsn.__file__)"], tmp_path, env, 120)
    assert where.stdout.strip() == str(REPO / "minipsn" / "__init__.py")
    out = tmp_path / "run"
    proc = _run([str(venv / "bin" / "minipsn"), "train", "--model", "tiny", "--steps", "1", "--out", str(out)],
                tmp_path, env, 1800)
    assert "step 1/1" in proc.stdout and f"run folder: {out}" in proc.stdout
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "samples.jsonl").is_file()

"""benchmarks/ and scripts/: what they time and count is the code of the checkout they are in."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).parents[1]
# Every script started as `python benchmarks/NAME.py` (realsize.py is the others' module) and scripts/count_params.py
SCRIPTS = [p.relative_to(REPO) for p in [*sorted(REPO.glob("benchmarks/*.py")), REPO / "scripts" / "count_params.py"]
           if p.name != "realsize.py"]

# Loads each script as `python SCRIPT` would (its folder first on the path, then the interpreter's own), without its
# main, and says where `mome_cli` comes from once the script's imports ran (or failed on the stand-in package).
WHICH_MOME_CLI = """
import os, runpy, sys
interpreter = sys.path[1:]
for script in sys.argv[1:]:
    sys.path[:] = [os.path.dirname(script), *interpreter]
    for name in [n for n in sys.modules if n.split(".")[0] in ("mome_cli", "realsize", "cpu_transcribe")]:
        del sys.modules[name]
    try:
        runpy.run_path(script, run_name="benchmark")
    except ImportError:  # the stand-in has no modules
        pass
    import mome_cli
    print(script, mome_cli.__file__)
"""


def test_benchmarks_and_count_params_import_the_checkout_they_are_in(tmp_path):
    """With mome installed from another checkout (an editable install of the main tree, a worktree beside it), a
    benchmark run from this one must time this one's code, not the installed one's."""
    checkout = tmp_path / "checkout"
    for script in SCRIPTS:
        (checkout / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / script, checkout / script)
    (checkout / "mome_cli").mkdir()
    (checkout / "mome_cli" / "__init__.py").write_text("")  # a stand-in: where the checkout's package lies
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", WHICH_MOME_CLI, *(str(checkout / s) for s in SCRIPTS)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    found = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert found == {str(checkout / s): str(checkout / "mome_cli" / "__init__.py") for s in SCRIPTS}


def run_gpu(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # python: this one
    return subprocess.run(["bash", str(REPO / "benchmarks" / "run_gpu.sh"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_run_gpu_help_says_how_and_makes_nothing(tmp_path):
    for flag in ("-h", "--help"):
        result = run_gpu(flag, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "bash benchmarks/run_gpu.sh [OUT_DIR [NAME ...]]" in result.stdout
        assert "NAMEs: latency-1b latency-1b-quick" in result.stdout
    assert list(tmp_path.iterdir()) == []  # before: an OUT_DIR named after realpath's own --help text was tried


@pytest.mark.skipif(torch.cuda.is_available(), reason="what it does without a GPU")
def test_run_gpu_without_a_gpu_says_so_for_each_and_fails(tmp_path):
    """Each benchmark stops at once with one line saying it needs the GPU (mome-module too: it ran on the CPU and kept
    the CPU's figures in the GPU's results), and the script's status says that they failed."""
    result = run_gpu(str(tmp_path / "out"), "mome-module", "encoders", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    for name in ("mome-module", "encoders"):
        kept = (tmp_path / "out" / f"{name}.txt").read_text()
        assert "no CUDA GPU is usable here" in kept and f"== {name}: failed, exit 2" in kept, kept
        assert "Traceback" not in kept

"""benchmarks/ and scripts/: what they time and count is the code of the checkout they are in."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

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

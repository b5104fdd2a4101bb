"""scripts/make_demo.sh, what made the demo model's backbones, against the commands the README gives for it
("The demo model"): the same stages with the same options (the README had lost --lr 2e-3 and the --valid reports)."""
import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).parents[1]


def stages(text: str) -> dict[str, list[str]]:
    """The backbones' stages' words, by output folder, and the synth command's after its folder (data/synth in the
    README, synth in the script), by "synth": from shell text, continuation lines joined, comments dropped, and of
    the script's `finished STAGE || pre ...`, the command."""
    found = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        command = re.search(r"(?:^|\|\|)\s*((?:pre|python -m mome_cli\.synth) .*)", line)
        if command is None:
            continue
        words = shlex.split(command.group(1), comments=True)
        if words[0] == "pre":
            if words[1] in ("backbones", "reader"):  # not bundle, nor the baselines' projectors
                found[words[words.index("-o") + 1]] = words[1:]
        elif "--long-form" not in words:
            found["synth"] = words[4:]
    return found


def readme_commands() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The demo model") :]
    return re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_gives_the_demo_stages_as_make_demo_sh_runs_them():
    script, readme = stages((REPO / "scripts" / "make_demo.sh").read_text()), stages(readme_commands())
    assert len(script) == 14 and {"synth", "backbones-ctc", "reader5", "backbones"} <= set(script)  # all parsed
    assert readme == script


def test_the_readme_says_the_bundle_needs_an_editable_install():
    """The bundle is written into the checkout; an installed copy (`pip install .`) loads its own."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The demo model") : readme.index("```sh", readme.index("### The demo model"))]
    assert "pip install -e ." in section and "mome_cli/models/demo" in section


def test_make_demo_help_says_how_and_makes_nothing(tmp_path):
    for flag in ("-h", "--help"):
        result = subprocess.run(["bash", str(REPO / "scripts" / "make_demo.sh"), flag], capture_output=True,
                                text=True, cwd=tmp_path, timeout=60)
        assert result.returncode == 0, result.stderr  # before: --help was taken for WORK_DIR (realpath's own --help)
        assert "bash scripts/make_demo.sh [WORK_DIR]" in result.stdout
    assert list(tmp_path.iterdir()) == []

#!/usr/bin/env bash
# Regenerates completions/mome.{bash,zsh,fish} from the Click app (Click's _MOME_COMPLETE=<shell>_source).
# Run it after changing how completion is driven (prog name, Click upgrade); tests/test_cli.py checks the files are current.
# The scripts call back into mome for every TAB, so new commands and options need no regeneration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=.venv/bin/python
[[ -x $python ]] || python=python3
for shell in bash zsh fish; do
    _MOME_COMPLETE="${shell}_source" "$python" -m mome_cli > "completions/mome.$shell"
    echo "wrote completions/mome.$shell" >&2
done

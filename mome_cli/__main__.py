"""``python -m mome_cli`` (and ``torchrun ... -m mome_cli train ...``) runs the CLI."""

from .cli import main

if __name__ == "__main__":
    main()

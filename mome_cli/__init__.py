"""mome: audio-visual speech recognition with a Mixture of Matryoshka Experts.

From Python, as from the command line::

    import mome_cli

    model = mome_cli.load_model("demo")  # what `mome transcribe --model demo` loads
    print(model.transcribe_file("examples/demo.mp4", roi=True).text)

Kept free of heavy imports so that ``mome --help`` and shell completion stay instant: load_model imports torch
when it is called.
"""

import os
import warnings

__version__ = "0.1.0"


def load_model(name="demo", device: str = "auto", adapter=None):
    """The model `mome transcribe --model NAME [--adapter DIR] --device DEVICE` loads, as a recognizer.Recognizer:
    its transcribe_file(path, mode=..., rate=..., roi=...) gives the Transcript that the command writes.

    name: a preset (tiny, demo, mome-1b, mome-3b, mome-8b: the last three with an adapter) or a checkpoint folder
    written by `mome train` (a str or a path, as adapter); device: auto, cpu or cuda. Backbones come from mome's
    cache ($MOME_HOME) and are never downloaded here: one that is missing raises hub.MissingModelError naming the
    `mome download` that fetches it, one that cannot be used hub.UnusableModelError, and an unknown name
    options.UsageProblem.
    """
    from .recognizer import load_recognizer

    name = os.fspath(name)  # a str, as the Transcript's model is in JSON
    adapter = None if adapter is None else os.fspath(adapter)
    model = load_recognizer(name, adapter, device)
    if name == "tiny" and adapter is None:  # the command's warning, as Python's
        warnings.warn("the tiny model is random and untrained: its transcripts are meaningless", stacklevel=2)
    return model


__all__ = ["__version__", "load_model"]

"""Scripts that rebuild what the project ships (the click decoder in sonosam/weights/) or reproduce the
experiments in docs/training.md. Not part of the installed package: run them from the repository root,
e.g. `python -m scripts.default_decoder --help`."""

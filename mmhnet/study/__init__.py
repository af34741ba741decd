"""The train-short / test-long study (docs/study.md): ``python -m mmhnet.study`` or
``make study``."""

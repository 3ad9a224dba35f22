"""kdlib: knowledge-distillation sweeps for speech enhancement.

The library (models, KD methods, trainer, metrics) imports without Ray or MLflow so it runs on
machines that have neither; only :mod:`kdlib.sweep` and :mod:`kdlib.report` import them, lazily.
"""

__version__ = "0.1.0"

"""The sweep layer: plan, trials, Ray Tune + Optuna + MLflow glue.

``plan``, ``spec``, ``contract``, ``teachers`` and ``trial``'s imports need neither Ray nor MLflow (a trial
imports Ray inside its function); ``tracking``, ``space``, ``teacher_tasks``, ``session``, ``runner`` and
``resume`` use them.
"""

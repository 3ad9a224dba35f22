"""The sweep layer: Ray Tune + Optuna + MLflow glue. Imports Ray and MLflow (the library does not)."""

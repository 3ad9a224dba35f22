"""The strict pydantic base of every schema section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are refused; every float (nested tuples and lists included) must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

"""The strict pydantic base shared by Overseer's data models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo in a file is reported, not ignored); attribute docstrings are field docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class FiniteModel(StrictModel):
    """A StrictModel for files users can edit: NaN and infinity are errors, since no size, factor or
    temperature is either, and one would otherwise surface later as a crash or a nonsense number."""

    model_config = ConfigDict(allow_inf_nan=False)

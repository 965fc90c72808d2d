"""Config schema of LoRA adapters served from startup (``models[].adapters``)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


ADAPTER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AdapterConfig(BaseModel):
    """A LoRA adapter served with its base model from startup (more come at runtime through
    ``/admin/adapters``). Clients call it ``<model>:<id>`` or by one of its aliases."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Adapter id: letters, digits, '_', '.', '-' (at most 64); its model name is '<model>:<id>'.")
    path: str = Field(description="PEFT adapter directory (adapter_config.json + adapter_model.safetensors), "
                                  "readable at this path on every node that runs the model's replicas.")
    aliases: list[str] = Field(default_factory=list, description="More model names clients may call the adapter by.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ADAPTER_ID_RE.match(v):
            raise ValueError(f"id {v!r} must match {ADAPTER_ID_RE.pattern}")
        return v

    @field_validator("path")
    @classmethod
    def _expand(cls, v: str) -> str:
        return str(Path(v).expanduser())

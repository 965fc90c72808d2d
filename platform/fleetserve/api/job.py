"""The request as it travels the ingress's stages: the served model and the :class:`Job`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from fleetserve.api.prompts import PromptRenderer
from fleetserve.api.tool_calls import ToolPlan
from fleetserve.canary.serving import fingerprint, route_key
from fleetserve.engine.protocol import LoraRef, ModelInfo
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.tenants.context import TenantContext


@dataclass(frozen=True)
class ModelSpec:
    """What the ingress knows about a served model before it first talks to a replica."""

    name: str
    checkpoint: str
    version: str = "v1"
    prefix_affinity_blocks: int = 2
    block_size: int = 16
    tool_call_parser: Optional[str] = "hermes"  # reads tool_choice=auto output; None: the text stays content


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    info: ModelInfo
    renderer: PromptRenderer
    created: int
    adapter: Optional[LoraRef] = None  # a LoRA adapter of the model (``spec`` is the base's)

    @property
    def name(self) -> str:
        """The name the client called: the adapter's full name, else the model's."""
        return self.adapter.name if self.adapter is not None else self.spec.name


@dataclass
class Job:
    """One API request, tokenized and validated, ready to run through the stages."""

    request_id: str
    model: ServedModel
    ctx: TenantContext
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    arrival: float
    created: int = field(default_factory=lambda: int(time.time()))
    user: Optional[str] = None  # the OpenAI ``user`` field: stage 3's sticky key
    pinned_version: Optional[str] = None  # the pin header as sent (stage 3 decides whether it counts)
    may_pin: bool = False  # the caller may pin (admin key, or a tenant flagged for it)
    version: Optional[str] = None  # set by stage 3; None before it: the model's stable version
    log_prediction: bool = False  # set by stage 3: this job is in the sampled prediction log
    tool_plan: Optional[ToolPlan] = None  # chat with tools: how the API layer reads tool calls from the text
    echo: Optional[list[str]] = None  # completions with echo: each prompt's text, put before its choices' text

    @property
    def served_version(self) -> str:
        return self.version if self.version is not None else self.model.spec.version

    @property
    def route_model(self) -> str:
        """What stages 5-6 route by: the alias for the stable version, else ``model@version``."""
        return route_key(self.model.spec.name, self.served_version, self.model.spec.version)

    @property
    def fingerprint(self) -> Optional[str]:
        """``<model>@<version>``: the response header and ``system_fingerprint``; None until
        stage 3 has chosen the version."""
        return fingerprint(self.model.spec.name, self.version) if self.version is not None else None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def labels(self) -> dict:
        spec = self.model.spec
        return dict(tenant=self.ctx.tenant_id, model=spec.name, version=self.served_version)

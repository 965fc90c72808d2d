"""Build the engine a replica hosts from its model config (``engine: native | vllm``).

The only place that knows which class implements which backend; the replica deployment
receives an :class:`EngineProtocol` and never imports a backend itself.
"""

from __future__ import annotations

from fleetserve.config import ModelConfig
from fleetserve.engine.protocol import EngineProtocol


def build_engine(model: ModelConfig) -> EngineProtocol:
    if model.engine == "native":
        config = model.native_engine_config()
        if config.engine_process:
            from fleetserve.engine.process.process_engine import ProcessEngine

            return ProcessEngine(config)
        from fleetserve.engine.process.async_engine import AsyncEngine

        return AsyncEngine(config)
    if model.engine == "vllm":
        from fleetserve.engine.vllm.backend import VllmEngine

        args = dict(model.engine_args)
        tp = args.pop("tensor_parallel_size", 1)
        return VllmEngine(model.checkpoint, engine_args=args, tensor_parallel_size=tp, served_model_name=model.name)
    raise ValueError(f"unknown engine {model.engine!r}")

"""fleetserve's own Llama-family decoder: config mapping, layers, paged attention, loader."""

from fleetserve.engine.model.config import ModelConfig, RopeConfig, load_model_config, model_config_from_hf
from fleetserve.engine.model.llama import LlamaForCausalLM
from fleetserve.engine.model.loader import load_model

__all__ = ["LlamaForCausalLM", "ModelConfig", "RopeConfig", "load_model", "load_model_config", "model_config_from_hf"]

"""fleetserve: multi-tenant LLM serving on Ray Serve.

The offline API mirrors vLLM's: ``from fleetserve import LLM, SamplingParams``.
Imports are lazy so that ``import fleetserve`` stays cheap (torch is heavy).
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from fleetserve.engine.llm import LLM
    from fleetserve.engine.sampling_params import SamplingParams


def __getattr__(name: str):
    if name == "LLM":
        from fleetserve.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from fleetserve.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(name)

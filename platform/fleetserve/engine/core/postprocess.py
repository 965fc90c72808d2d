"""Finish checks applied to each newly sampled token (stop strings live in the detokenizer)."""

from __future__ import annotations

from typing import Optional, Sequence

from fleetserve.engine.core.request import Request, RequestStatus


class Postprocessor:
    def __init__(self, eos_token_ids: Sequence[int], max_model_len: int):
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len

    def check_token(self, request: Request, token_id: int) -> Optional[RequestStatus]:
        """STOPPED when the token is EOS (unless ignore_eos) or one of stop_token_ids."""
        params = request.params
        if token_id in self.eos_token_ids and not params.ignore_eos:
            return RequestStatus.FINISHED_STOPPED
        if params.stop_token_ids and token_id in params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED
        return None

    @staticmethod
    def check_grammar(request: Request, token_id: int) -> Optional[RequestStatus]:
        """Advance the request's grammar by the sampled token: STOPPED once the grammar is
        complete (its last token is shown; a stop token after it would be hidden anyway)."""
        if not request.grammar.accept(token_id):
            # The mask only allows accepted tokens; reaching here is an engine bug.
            raise RuntimeError(f"grammar rejected sampled token {token_id}")
        return RequestStatus.FINISHED_STOPPED if request.grammar.is_terminated else None

    def check_length(self, request: Request) -> Optional[RequestStatus]:
        """LENGTH when max_tokens is reached or the context is full."""
        if request.num_output_tokens >= request.max_tokens or request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

"""Incremental detokenization for streaming, with stop strings.

Two rules make streams safe to concatenate:

- Never emit broken UTF-8: a byte-level token can end in the middle of a multi-byte
  character, which decodes to U+FFFD. Such text is held back until the next tokens complete
  it. Decoding uses a small window of previous tokens (the prefix/read offsets of
  Hugging Face's streamer) so that tokenizers that drop a leading space decode correctly.
- Never split a stop string across chunks: the longest suffix of the text that is a prefix
  of some stop string is held back until it either completes the stop string (and is cut)
  or stops matching.
"""

from __future__ import annotations

from typing import Optional, Sequence

from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.tokenizer import Tokenizer
from fleetserve.errors import InvalidRequestError

_PROMPT_CONTEXT_TOKENS = 6  # prompt tokens decoded before the output for correct spacing


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.stop = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in self.stop), default=0)
        context = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self.text = ""      # output text decoded so far (cut at a stop string when one matched)
        self._emitted = 0   # characters of ``text`` already returned

    def replay(self, token_ids: Sequence[int]) -> None:
        """Take a continuation's already-streamed tokens as emitted: the state (decode window,
        held-back partial character or stop-string prefix) becomes the one the first attempt
        had after them, so the next delta starts exactly where the client's text ends."""
        for t in token_ids:
            if self.add_token(t) is not None:
                raise InvalidRequestError("resume_token_ids already contain a stop string", field="resume_token_ids")
        self.pull_delta(False)

    def add_token(self, token_id: int) -> Optional[str]:
        """Decode one more output token; returns the stop string it completed, if any."""
        self._ids.append(token_id)
        ids = self._ids
        prefix_text = self.tokenizer.decode(ids[self._prefix_offset:self._read_offset])
        new_text = self.tokenizer.decode(ids[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return None  # incomplete character (or nothing visible yet): wait for more
        old_len = len(self.text)
        self.text += new_text[len(prefix_text):]
        self._prefix_offset = self._read_offset
        self._read_offset = len(ids)
        return self._find_stop(old_len) if self.stop else None

    def _find_stop(self, old_len: int) -> Optional[str]:
        # A stop string can only end inside the new text: start the search just before it.
        start = max(0, old_len - self.max_stop_len + 1)
        best: Optional[tuple[int, str]] = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        i, s = best
        self.text = self.text[: i + len(s)] if self.include_stop else self.text[:i]
        return s

    def _holdback(self) -> int:
        """Length of the longest suffix of ``text`` that could still grow into a stop string."""
        text = self.text
        for n in range(min(self.max_stop_len - 1, len(text)), 0, -1):
            suffix = text[-n:]
            if any(s.startswith(suffix) for s in self.stop):
                return n
        return 0

    def pull_delta(self, finished: bool) -> str:
        """Text that is safe to send now (everything, once the request finished)."""
        end = len(self.text)
        if not finished and self.stop:
            end -= self._holdback()
        if end <= self._emitted:
            return ""
        delta = self.text[self._emitted:end]
        self._emitted = end
        return delta

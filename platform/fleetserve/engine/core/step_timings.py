"""Where an engine step's time goes, per phase (benchmarks read it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepTimings:
    """Cumulative seconds per phase, so a benchmark can report the scheduler's and Python's
    share of step time (everything but ``execute_s`` is engine overhead)."""

    steps: int = 0
    schedule_s: float = 0.0
    prepare_s: float = 0.0     # swaps + building the runner's batch description
    execute_s: float = 0.0     # runner.execute (the forward pass)
    sample_s: float = 0.0
    postprocess_s: float = 0.0  # stop checks, detokenization, outputs

    @property
    def total_s(self) -> float:
        return self.schedule_s + self.prepare_s + self.execute_s + self.sample_s + self.postprocess_s

    def reset(self) -> None:
        self.__init__()

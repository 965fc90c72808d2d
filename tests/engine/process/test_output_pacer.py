"""OutputPacer: the engine process's stream pacing (fake clock, hand-made outputs)."""

from __future__ import annotations

from fleetserve.engine.process.output_pacer import OutputPacer
from fleetserve.engine.protocol import RequestOutput


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def out(rid: str, tok: int, finished: bool = False) -> RequestOutput:
    return RequestOutput(rid, text_delta=f"<{tok}>", token_ids_delta=[tok], finished=finished,
                         finish_reason="length" if finished else None)


def tokens(outs) -> list[int]:
    return [t for o in outs for t in o.token_ids_delta]


def test_first_output_at_once_then_one_merged_output_per_interval():
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 0.25)
    assert tokens(p.offer([out("a", 1)])) == [1]  # the first token never waits
    sent = []
    for tok in range(2, 10):  # 8 steps of 1/16 s (exact in binary floating point)
        clock.t += 0.0625
        sent.append(p.offer([out("a", tok)]) + p.due())
    batches = [tokens(s) for s in sent if s]
    assert batches == [[2, 3, 4, 5], [6, 7, 8, 9]]  # due at +0.25 and +0.50
    assert "".join(o.text_delta for s in sent for o in s) == "".join(f"<{t}>" for t in range(2, 10))


def test_final_output_is_never_held_and_carries_what_was_held():
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 30.0)
    p.offer([out("a", 1)])
    clock.t += 0.01
    assert p.offer([out("a", 2)]) == []
    clock.t += 0.01
    last = p.offer([out("a", 3, finished=True)])
    assert len(last) == 1 and last[0].finished and tokens(last) == [2, 3] and last[0].text_delta == "<2><3>"
    assert p.num_tracked() == 0  # forgotten once finished


def test_unpaced_and_untracked_requests_pass_every_output():
    p = OutputPacer(Clock())
    p.track("fast", 0.0)
    assert tokens(p.offer([out("fast", 1), out("other", 7)])) == [1, 7]
    assert tokens(p.offer([out("fast", 2)])) == [2]
    assert p.num_tracked() == 0


def test_held_outputs_leave_when_due_without_new_output_and_on_flush():
    # A preempted request makes no output for a while: what it made is still sent when due.
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 0.25)
    p.track("b", 0.25)
    p.offer([out("a", 1), out("b", 1)])
    clock.t += 0.05
    assert p.offer([out("a", 2), out("b", 2)]) == [] and p.due() == []
    clock.t += 0.25
    assert sorted((o.request_id, tokens([o])) for o in p.due()) == [("a", [2]), ("b", [2])]
    clock.t += 0.01
    p.offer([out("a", 3)])
    assert [(o.request_id, tokens([o])) for o in p.flush_all()] == [("a", [3])]  # before the process blocks
    assert p.flush_all() == []


def test_abort_output_carries_held_tokens_in_front():
    clock = Clock()
    p = OutputPacer(clock)
    p.track("a", 1.0)
    p.offer([out("a", 1)])
    clock.t += 0.1
    p.offer([out("a", 2)])
    aborted = RequestOutput("a", finished=True, finish_reason="abort")
    final = p.take("a", aborted)
    assert final.finished and final.finish_reason == "abort" and tokens([final]) == [2]
    assert p.take("a", None) is None and p.num_tracked() == 0

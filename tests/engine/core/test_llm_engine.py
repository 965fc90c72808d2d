"""LLMEngine glue with the fake runner: finish conditions, failures isolated, stats."""

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.core.kv_budget import plan_kv_budget
from tests.engine.factories import (
    greedy,
    make_byte_tokenizer,
    make_config,
    make_engine,
    make_generate_request,
    make_runner,
    run_to_completion,
)


def _tokens(stream):
    return [t for o in stream for t in o.token_ids_delta]


def test_eos_stop_token_ids_and_ignore_eos():
    runner = make_runner(block_size=4)
    prompt = [3, 1, 4, 1, 5]
    ref = runner.reference(prompt, 10)
    eos = ref[3]
    runner.eos_token_ids = [eos]
    engine = make_engine(runner)
    engine.add_request(make_generate_request(request_id="eos", prompt_token_ids=prompt, params=greedy(max_tokens=10)))
    engine.add_request(make_generate_request(request_id="ign", prompt_token_ids=prompt,
                                             params=greedy(max_tokens=10, ignore_eos=True)))
    engine.add_request(make_generate_request(request_id="stid", prompt_token_ids=prompt,
                                             params=greedy(max_tokens=10, stop_token_ids=[ref[1]], ignore_eos=True)))
    s = run_to_completion(engine)
    assert _tokens(s["eos"]) == ref[: ref.index(eos) + 1] and s["eos"][-1].finish_reason == "stop"
    assert _tokens(s["ign"]) == ref and s["ign"][-1].finish_reason == "length"
    assert _tokens(s["stid"]) == ref[: ref.index(ref[1]) + 1] and s["stid"][-1].finish_reason == "stop"
    assert engine.kv.num_used_blocks == 0


def test_stop_string_through_engine_with_tokenizer():
    tok = make_byte_tokenizer()
    runner = make_runner(block_size=4, vocab_size=128)  # ASCII bytes only: every token is text
    prompt = tok.encode("hello")
    ref_text = tok.decode(runner.reference(prompt, 20))
    stop = ref_text[5:8]
    engine = make_engine(runner, tokenizer=tok)
    engine.add_request(make_generate_request(request_id="s", prompt_token_ids=prompt,
                                             params=greedy(max_tokens=20, stop=[stop])))
    s = run_to_completion(engine)["s"]
    assert s[-1].finish_reason == "stop"
    assert "".join(o.text_delta for o in s) == ref_text[: ref_text.find(stop)]
    assert engine.kv.num_used_blocks == 0


def test_failure_in_one_request_fails_only_that_request():
    runner = make_runner(block_size=4)
    engine = make_engine(runner)
    bad_token = next(t for t in range(64) if t not in runner.reference([1, 2, 3], 8) + [1, 2, 3])
    runner.fail_on_token = bad_token
    engine.add_request(make_generate_request(request_id="bad", prompt_token_ids=[1, bad_token, 2]))
    engine.add_request(make_generate_request(request_id="good", prompt_token_ids=[1, 2, 3]))
    s = run_to_completion(engine)
    assert s["bad"][-1].finish_reason == "error" and "injected" in s["bad"][-1].error
    assert _tokens(s["good"]) == runner.reference([1, 2, 3], 8)
    assert engine.kv.num_used_blocks == 0
    # The engine keeps serving after the failure.
    engine.add_request(make_generate_request(request_id="after", prompt_token_ids=[4, 5]))
    assert run_to_completion(engine)["after"][-1].finish_reason == "length"


def test_abort_returns_final_output_and_frees_blocks():
    engine = make_engine()
    engine.add_request(make_generate_request(request_id="a", params=greedy(max_tokens=50)))
    engine.step()
    final = engine.abort("a")
    assert final.finished and final.finish_reason == "abort"
    assert engine.abort("a") is None
    assert engine.kv.num_used_blocks == 0 and not engine.has_unfinished()


def test_stats_and_timings():
    engine = make_engine(num_kv_blocks=20)
    for i in range(3):
        engine.add_request(make_generate_request(params=greedy(max_tokens=4)))
    engine.step()
    st = engine.stats()
    assert st.num_running == 3 and st.kv_blocks_total == 20 and st.kv_blocks_used == 6
    usage = engine.kv_slot_usage()  # 3 x 5 computed prompt tokens in 2-block tables
    assert (usage.used_blocks, usage.filled_slots, usage.used_block_slots) == (6, 15, 24)
    assert st.kv_bytes_allocated == 20 * 1024
    run_to_completion(engine)
    st = engine.stats()
    assert st.num_finished == 3 and st.generated_tokens_total == 12 and st.kv_blocks_used == 0
    assert engine.timings.steps == 4 and engine.timings.execute_s > 0


def test_kv_budget_from_bytes_and_fraction():
    cfg = make_config(num_kv_blocks=None, kv_cache_memory_bytes=10 * 1024 + 5)
    assert plan_kv_budget(cfg, 1024, 256).num_blocks == 10
    cfg = EngineConfig(model="x", kv_cache_memory_fraction=0.5, max_num_seqs=2)
    plan = plan_kv_budget(cfg, 1024, 64)   # capped: 2 seqs * 4 blocks
    assert plan.num_blocks == 8 and plan.source == "kv_cache_memory_fraction"
    swap = plan_kv_budget(make_config(preemption_mode="swap", swap_space_bytes=4096), 1024, 64)
    assert swap.num_host_blocks == 4


def test_side_step_between_layers_of_a_paused_step():
    # The layered fake runner re-reads every item's context after the pause, so a side
    # prefill that wrote over the paused step's blocks would change the batch's tokens.
    runner = make_runner(block_size=4, layered=True)
    engine = make_engine(runner, max_num_batched_tokens=64)
    assert engine.supports_side_steps
    batch = [make_generate_request(request_id=f"b{i}", prompt_token_ids=[i + 1, 2, 3, 4, 5], priority=2,
                                   params=greedy(max_tokens=12)) for i in range(3)]
    for r in batch:
        engine.add_request(r)
    streams: dict[str, list] = {}

    def collect(outs):
        for o in outs:
            streams.setdefault(o.request_id, []).append(o)

    collect(engine.step())
    side_outputs = []

    def pause():
        if not side_outputs:
            engine.add_request(make_generate_request(request_id="p", prompt_token_ids=[9, 8, 7, 6, 5, 4],
                                                     priority=0, params=greedy(max_tokens=5)))
            side_outputs.extend(engine.side_step())

    collect(engine.step(pause))
    assert runner.num_paused_passes == 1 and engine.scheduler.num_side_prefills == 1
    assert [o.request_id for o in side_outputs] == ["p"] and side_outputs[0].token_ids_delta == runner.reference([9, 8, 7, 6, 5, 4], 1)
    collect(side_outputs)
    while engine.has_unfinished():
        collect(engine.step())
    for r in batch:
        assert _tokens(streams[r.request_id]) == runner.reference(r.prompt_token_ids, 12)
    assert _tokens(streams["p"]) == runner.reference([9, 8, 7, 6, 5, 4], 5)
    assert engine.kv.num_used_blocks == 0


def test_side_steps_off_without_a_layered_runner_or_when_configured_off():
    assert not make_engine(make_runner(block_size=4)).supports_side_steps
    assert not make_engine(make_runner(block_size=4, layered=True), interleave_priority_prefill=False).supports_side_steps

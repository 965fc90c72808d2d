"""Sampler: greedy fast path, seeds independent of the batch, penalties, masks, logprobs."""

import torch

from fleetserve.engine.core.sampler import Sampler, _mask_top_k_top_p_min_p
from fleetserve.engine.sampling_params import SamplingParams
from tests.engine.factories import make_request

V = 32


def _logits(rows, seed=0):
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed))


def _req(**params):
    return make_request([1, 2, 3], params=SamplingParams(**{"max_tokens": 8, **params}))


def test_greedy_is_argmax():
    logits = _logits(4)
    out = Sampler().sample(logits, [_req(temperature=0) for _ in range(4)])
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs is None


def test_seeded_row_does_not_depend_on_the_rest_of_the_batch():
    row = _logits(1, seed=5)[0]

    def draw(batch_rows, position, sampler_seed):
        logits = _logits(batch_rows, seed=sampler_seed + 100)
        logits[position] = row
        reqs = [_req(temperature=1.0) for _ in range(batch_rows)]
        seeded = _req(temperature=1.0, seed=42)
        reqs[position] = seeded
        tokens = []
        sampler = Sampler(seed=sampler_seed)
        for _ in range(20):
            tokens.append(sampler.sample(logits, reqs).token_ids[position])
            seeded.append_token(tokens[-1])  # the draw depends on (seed, position)
        return tokens

    a = draw(1, 0, 0)
    assert a == draw(5, 3, 1) == draw(8, 7, 2)
    assert len(set(a)) > 1  # it really samples
    other_seed = _req(temperature=1.0, seed=43)
    b = []
    for _ in range(20):
        b.append(Sampler().sample(row[None], [other_seed]).token_ids[0])
        other_seed.append_token(b[-1])
    assert a != b


def test_unseeded_sampling_follows_the_distribution():
    logits = torch.full((1, V), -10.0)
    logits[0, 3] = 0.0
    logits[0, 5] = 0.0
    sampler = Sampler(seed=1)
    req = _req(temperature=1.0)
    seen = {sampler.sample(logits, [req]).token_ids[0] for _ in range(50)}
    assert seen == {3, 5}


def test_top_k_top_p_min_p_masks():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda **p: (_mask_top_k_top_p_min_p(logits.clone(), [SamplingParams(**p)]) > -1e30).tolist()[0]
    assert keep(top_k=2) == [True, True, False, False]
    assert keep(top_p=0.7) == [True, True, False, False]
    assert keep(top_p=0.8) == [True, True, False, False]
    assert keep(top_p=0.81) == [True, True, True, False]
    assert keep(top_p=0.1) == [True, False, False, False]
    assert keep(min_p=0.5) == [True, True, False, False]
    assert keep() == [True, True, True, True]
    # Rows keep their own settings in one batch.
    both = _mask_top_k_top_p_min_p(logits.repeat(2, 1), [SamplingParams(top_k=1), SamplingParams()])
    assert (both > -1e30).sum(-1).tolist() == [1, 4]


def test_top_k_one_sampling_equals_greedy():
    logits = _logits(3)
    reqs = [_req(temperature=1.5, top_k=1, seed=i) for i in range(3)]
    assert Sampler().sample(logits, reqs).token_ids == logits.argmax(-1).tolist()


def test_penalties_change_greedy_choice():
    logits = torch.zeros(1, V)
    logits[0, 7] = 1.0
    logits[0, 8] = 0.9
    req = _req(temperature=0, frequency_penalty=0.5)
    req.append_token(7)
    assert Sampler().sample(logits, [req]).token_ids == [8]
    req = _req(temperature=0, presence_penalty=0.2)
    req.append_token(7)
    req.append_token(7)
    assert Sampler().sample(logits, [req]).token_ids == [8]
    # Repetition penalty covers prompt tokens too: token 2 is in the prompt [1, 2, 3].
    logits = torch.zeros(1, V)
    logits[0, 2] = 1.0
    logits[0, 9] = 0.8
    assert Sampler().sample(logits, [_req(temperature=0, repetition_penalty=1.5)]).token_ids == [9]
    assert Sampler().sample(logits, [_req(temperature=0)]).token_ids == [2]


def test_logprobs_top_n_and_sampled_token():
    logits = _logits(2)
    out = Sampler().sample(logits, [_req(temperature=0, logprobs=3), _req(temperature=0)])
    lp = out.logprobs[0]
    ref = torch.log_softmax(logits[0], -1)
    assert lp.token_id == out.token_ids[0]
    assert abs(lp.logprob - ref.max().item()) < 1e-6
    assert list(lp.top) == ref.topk(3).indices.tolist()
    assert out.logprobs[1] is None
    zero = Sampler().sample(logits[:1], [_req(temperature=0, logprobs=0)]).logprobs[0]
    assert zero.top == {}


def test_logit_bias_moves_greedy_and_sampled_choices():
    logits = _logits(2)
    top = logits.argmax(-1).tolist()
    target = (top[0] + 1) % V
    out = Sampler().sample(logits.clone(), [_req(temperature=0, logit_bias={target: 100.0}),
                                            _req(temperature=0)])
    assert out.token_ids == [target, top[1]]  # the other row is untouched
    banned = Sampler().sample(logits.clone(), [_req(temperature=0, logit_bias={top[0]: -100.0})]).token_ids[0]
    assert banned != top[0]
    drawn = {Sampler(seed=s).sample(logits[:1].clone(), [_req(temperature=1.0, logit_bias={target: 100.0})]).token_ids[0]
             for s in range(10)}
    assert drawn == {target}

"""The test-only fault injector: keys taken out of the engine args, seeded, bounded."""

import pytest

from fleetserve.deployments.fault_injection import FaultInjector


def test_split_args_removes_its_keys_and_is_seeded():
    inj, rest = FaultInjector.split_args({"fail_fraction": 0.5, "fail_seed": 3, "num_threads": 1})
    assert rest == {"num_threads": 1}
    again, _ = FaultInjector.split_args({"fail_fraction": 0.5, "fail_seed": 3})
    draws = [inj.should_fail() for _ in range(200)]
    assert draws == [again.should_fail() for _ in range(200)]
    assert 60 < sum(draws) < 140
    off, rest = FaultInjector.split_args({"num_threads": 1})
    assert rest == {"num_threads": 1} and not any(off.should_fail() for _ in range(100))
    with pytest.raises(ValueError, match="fail_fraction"):
        FaultInjector.split_args({"fail_fraction": 2})

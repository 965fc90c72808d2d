"""The sticky weighted split: accurate over 100k users, sticky across weight changes, pins gated."""

import pytest

from fleetserve.canary.errors import UnknownVersionError
from fleetserve.canary.split import assign, choose_version, hash_unit, layout, resolve_pin, sticky_key

USERS = [sticky_key(f"user-{i}", "acme") for i in range(100_000)]


def shares(weights, experiment="exp-1"):
    counts = dict.fromkeys(weights, 0)
    for u in USERS:
        counts[assign(u, experiment, weights)] += 1
    return {v: c / len(USERS) for v, c in counts.items()}


@pytest.mark.parametrize("canary", [0.01, 0.05, 0.25, 0.5, 1.0])
def test_split_is_within_half_a_point_of_the_weights(canary):
    weights = {"v1": 1 - canary, "v2": canary}
    got = shares(weights)
    for v, w in weights.items():
        assert abs(got[v] - w) <= 0.005, (v, got[v], w)


def test_three_way_split_and_unnormalised_weights():
    got = shares({"a": 2, "b": 1, "c": 1})
    assert abs(got["a"] - 0.5) <= 0.005 and abs(got["b"] - 0.25) <= 0.005 and abs(got["c"] - 0.25) <= 0.005


@pytest.mark.parametrize("w1, w2", [(0.01, 0.05), (0.05, 0.25), (0.25, 0.5), (0.5, 1.0), (0.5, 0.05)])
@pytest.mark.parametrize("stable, canary", [("v1", "v2"), ("stable", "canary")])
def test_a_weight_change_moves_only_the_users_in_the_moved_slice(stable, canary, w1, w2):
    before = {stable: 1 - w1, canary: w1}
    after = {stable: 1 - w2, canary: w2}
    # Two slices in sorted id order: the moved slice lies between the old and the new boundary.
    first = min(stable, canary)
    lo, hi = sorted((before[first], after[first]))
    moved = 0
    for u in USERS:
        a, b = assign(u, "exp-1", before), assign(u, "exp-1", after)
        inside = lo <= hash_unit(u, "exp-1") < hi
        assert (a != b) == inside, (u, a, b)
        assert a == b or (a, b) == ((stable, canary) if w2 > w1 else (canary, stable))
        moved += a != b
    assert abs(moved / len(USERS) - abs(w2 - w1)) <= 0.005


def test_mapping_order_does_not_matter_and_experiments_reshuffle():
    w = {"v2": 0.3, "v1": 0.7}
    assert layout(w) == layout({"v1": 0.7, "v2": 0.3})
    same = sum(assign(u, "e1", w) == assign(u, "e2", w) for u in USERS[:20_000]) / 20_000
    assert abs(same - (0.7 ** 2 + 0.3 ** 2)) < 0.02  # independent assignments agree by chance only


def test_sticky_key_prefers_the_user_within_the_tenant():
    assert sticky_key("bob", "acme") != sticky_key("bob", "globex")
    assert sticky_key(None, "acme") == sticky_key("", "acme") == "tenant:acme"


def test_zero_weight_versions_get_nobody_and_bad_weights_are_refused():
    assert all(assign(u, "e", {"v1": 1.0, "v2": 0.0}) == "v1" for u in USERS[:5000])
    for bad in ({}, {"v1": 0.0}, {"v1": -0.1, "v2": 1.1}, {"v1": float("nan")}):
        with pytest.raises(ValueError, match="weights"):
            assign("u", "e", bad)


def test_a_pin_is_honoured_only_for_admins_or_flagged_tenants():
    versions = {"v1", "v2"}
    assert resolve_pin("v2", is_admin=False, tenant_may_pin=False, versions=versions) is None
    assert resolve_pin("v2", is_admin=True, tenant_may_pin=False, versions=versions) == "v2"
    assert resolve_pin("v2", is_admin=False, tenant_may_pin=True, versions=versions) == "v2"
    assert resolve_pin(None, is_admin=True, tenant_may_pin=True, versions=versions) is None
    assert resolve_pin("v9", is_admin=False, tenant_may_pin=False, versions=versions) is None
    with pytest.raises(UnknownVersionError, match="v9"):
        resolve_pin("v9", is_admin=True, tenant_may_pin=False, versions=versions)


def test_choose_version_says_why():
    w = {"v1": 1.0, "v2": 0.0}
    assert choose_version(user="u", tenant_id="t", experiment_id="e", weights=w).reason == "split"
    pinned = choose_version(user="u", tenant_id="t", experiment_id="e", weights=w, pinned="v2", tenant_may_pin=True)
    assert (pinned.version, pinned.reason) == ("v2", "pinned")
    ignored = choose_version(user="u", tenant_id="t", experiment_id="e", weights=w, pinned="v2")
    assert (ignored.version, ignored.reason) == ("v1", "split")

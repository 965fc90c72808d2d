"""The status table printed by `fleetserve status` (pure formatting)."""

from fleetserve.cli.status import format_table


def test_table_lists_every_replica_with_queue_and_kv():
    text = format_table({"models": [
        {"name": "tiny", "version": "v1", "replicas": [
            {"replica": "abc", "waiting": 3, "running": 7, "kv_usage": 0.256, "healthy": True, "draining": False, "stats_age_s": 0.4},
            {"replica": "def", "waiting": 0, "running": 1, "kv_usage": 0.0, "healthy": True, "draining": True, "stats_age_s": None},
        ]},
        {"name": "other", "version": "v2", "replicas": []},
    ]})
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "VERSION", "REPLICA"]
    assert lines[1].split() == ["tiny", "v1", "abc", "3", "7", "25.6%", "healthy", "0.4s"]
    assert "draining" in lines[2]
    assert "no replica" in lines[3]
    assert lines[-1] == "2 model(s), 2 replica(s)"


def test_scaling_lines_show_the_controllers_last_decision():
    from fleetserve.cli.status import scaling_lines

    lines = scaling_lines({"fleets": {"tiny@v1": {"serving": ["a", "b"], "standby": ["c"], "draining": {}, "pending": [{}],
                                                  "last_decision": {"target": 2, "notes": ["refill warm pool: 1"]}}}})
    assert lines == ["scaling tiny@v1: target 2, serving 2, standby 1, draining 0, starting 1 (refill warm pool: 1)"]

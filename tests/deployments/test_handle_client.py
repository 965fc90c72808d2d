"""Replica links or the Serve handle: the router's choice (ReplicaChooser) carried out by the
stream stage (HandleModelClient). Pure asyncio: a real link server on loopback, a stand-in
handle recording what reached it."""

from __future__ import annotations

import asyncio
import os
import random
import socket

from fleetserve.deployments.handle_client import HandleModelClient
from fleetserve.deployments.replica_link import ReplicaLinkClient, ReplicaLinkServer
from fleetserve.engine.protocol import GenerateRequest, RequestOutput
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.router.chooser import ReplicaChooser
from fleetserve.router.stats_board import ReplicaStatsBoard, from_routing_stats

SECRET = os.urandom(32)
DEP = "model-m"


def req(rid: str) -> GenerateRequest:
    return GenerateRequest(request_id=rid, prompt="x", params=SamplingParams(max_tokens=2, temperature=0))


async def two_tokens(request: GenerateRequest, tag: str):
    yield RequestOutput(request.request_id, text_delta=tag)
    yield RequestOutput(request.request_id, text_delta=tag, finished=True, finish_reason="length")


class RecordingHandle:
    """Answers ``options(stream=True).generate.remote(...)`` like a DeploymentHandle would."""

    def __init__(self):
        self.calls: list[str] = []

    def options(self, **_):
        return self

    @property
    def generate(self):
        return self

    def remote(self, request, prefix_key=None):
        self.calls.append(request.request_id)
        return two_tokens(request, "handle")


def closed_port_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"127.0.0.1:{port}"


class Routed:
    """The choose-replica and stream stages together, as the ingress runs them."""

    def __init__(self, handle, board, link, rng=None):
        self.client = HandleModelClient({"m": handle}, link=link)
        self.chooser = ReplicaChooser({"m": DEP}, self.client, board=board, rng=rng)

    def generate(self, rid: str):
        return self.client.generate(req(rid), self.chooser.choose("m", None))


async def text(routed: Routed, rid: str) -> str:
    return "".join([o.text_delta async for o in routed.generate(rid)])


async def test_link_used_when_advertised_handle_otherwise():
    server = ReplicaLinkServer(lambda r: two_tokens(r, "link"), SECRET)
    address = await server.start()
    board, handle = ReplicaStatsBoard(), RecordingHandle()
    client = Routed(handle, board, ReplicaLinkClient(SECRET), rng=random.Random(0))
    try:
        board.publish(DEP, from_routing_stats({"r1": {"num_running": 0}}))  # no link advertised (transport "serve")
        assert await text(client, "a") == "handlehandle" and handle.calls == ["a"]

        board.publish(DEP, from_routing_stats({"r1": {"num_running": 0, "link": address}}))
        assert await text(client, "b") == "linklink" and handle.calls == ["a"]
        row = client.chooser.replica_status()[0]
        assert row.link and row.link_streams == 1

        # A dead link next to a live one: the live one serves; both dead: the handle does.
        board.publish(DEP, from_routing_stats({"r0": {"num_running": 0, "link": closed_port_address()}, "r1": {"num_running": 5, "link": address}}))
        for i in range(6):
            assert await text(client, f"c{i}") == "linklink"
        board.publish(DEP, from_routing_stats({"r0": {"num_running": 0, "link": closed_port_address()}}))
        assert await text(client, "d") == "handlehandle" and handle.calls == ["a", "d"]
    finally:
        await server.close()


async def test_load_counts_this_processes_open_streams():
    """Two idle replicas by their stats: streams held open on one send the next to the other."""
    servers = [ReplicaLinkServer(lambda r, t=t: two_tokens(r, t), SECRET) for t in ("A", "B")]
    addrs = [await s.start() for s in servers]
    board = ReplicaStatsBoard()
    board.publish(DEP, from_routing_stats({"A": {"link": addrs[0]}, "B": {"link": addrs[1]}}))
    client = Routed(RecordingHandle(), board, ReplicaLinkClient(SECRET), rng=random.Random(1))
    try:
        held = client.generate("held")
        first = (await held.__anext__()).text_delta
        other = "B" if first == "A" else "A"
        for i in range(4):
            assert (await text(client, f"n{i}"))[0] == other
        await held.aclose()
    finally:
        for s in servers:
            await s.close()


async def test_a_draining_replica_refusing_over_its_link_falls_back_to_the_handle():
    from fleetserve.errors import ServiceUnavailableError

    async def draining(request):
        raise ServiceUnavailableError("replica is draining", retry_after_s=1.0)
        yield  # pragma: no cover - makes this an async generator

    async def dies_after_one(request):
        yield RequestOutput(request.request_id, text_delta="x")
        raise ServiceUnavailableError("lost the connection")

    servers = [ReplicaLinkServer(draining, SECRET), ReplicaLinkServer(dies_after_one, SECRET)]
    addrs = [await s.start() for s in servers]
    board, handle = ReplicaStatsBoard(), RecordingHandle()
    client = Routed(handle, board, ReplicaLinkClient(SECRET))
    try:
        board.publish(DEP, from_routing_stats({"r": {"link": addrs[0]}}))
        assert await text(client, "a") == "handlehandle" and handle.calls == ["a"]
        # After an output has gone out, the error is the caller's: no retry, no duplicate.
        board.publish(DEP, from_routing_stats({"r": {"link": addrs[1]}}))
        got = []
        try:
            async for o in client.generate("b"):
                got.append(o.text_delta)
        except ServiceUnavailableError:
            pass
        else:
            raise AssertionError("the mid-stream failure was swallowed")
        assert got == ["x"] and handle.calls == ["a"]
    finally:
        for s in servers:
            await s.close()


async def test_a_stream_handed_back_or_lost_names_its_replica_for_the_resume():
    """Over a link, a drain's Migrate frame and a dropped connection raise typed errors that
    name the replica (the resume stage avoids it), whether or not a token went out."""
    from fleetserve.errors import ReplicaStreamLost, RequestMigrated

    async def hands_back(request):
        yield RequestOutput(request.request_id, text_delta="x", token_ids_delta=[1])
        while request.request_id == "cut":  # streams until the server goes away
            await asyncio.sleep(0.01)
            yield RequestOutput(request.request_id, text_delta="y", token_ids_delta=[2])
        raise RequestMigrated("draining")

    server = ReplicaLinkServer(hands_back, SECRET)
    addr = await server.start()
    board, handle = ReplicaStatsBoard(), RecordingHandle()
    client = Routed(handle, board, ReplicaLinkClient(SECRET))
    try:
        board.publish(DEP, from_routing_stats({"r-7": {"link": addr}}))
        got = []
        try:
            async for o in client.generate("m"):
                got.append(o.text_delta)
        except RequestMigrated as exc:
            assert exc.replica == "r-7"
        else:
            raise AssertionError("the hand-back was swallowed")
        assert got == ["x"] and handle.calls == [] and client.client.ongoing["r-7"] == 0
        stream = client.generate("cut")
        await stream.__anext__()
        await server.close()  # the replica goes away mid-stream
        try:
            async for _ in stream:
                pass
        except ReplicaStreamLost as exc:
            assert exc.replica == "r-7" and not isinstance(exc, RequestMigrated)
        else:
            raise AssertionError("the lost link was swallowed")
    finally:
        await server.close()

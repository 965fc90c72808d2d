"""The rollout admin routes' edges: the admin key before the body, 4xx for bad input, 409 when disabled."""

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetserve.api.errors import http_error
from fleetserve.api.json_body import read_model
from fleetserve.canary.rollout_routes import build_rollout_router
from fleetserve.errors import FleetserveError
from tests.canary.factories import make_config
from tests.canary.rollout_server import ADMIN, MODEL, authenticate_admin, checkpoint, rollout_app

GOOD = {"Authorization": f"Bearer {ADMIN}"}


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_the_admin_key_comes_before_the_body_and_bad_input_is_a_4xx(tmp_path):
    async with client(rollout_app(tmp_path)) as c:
        url = f"/admin/models/{MODEL}/rollout"
        assert (await c.post(url, content=b"{bad", headers={"Authorization": "Bearer x"})).status_code == 401
        assert (await c.post(url + "/pause")).status_code == 401
        r = await c.post(url, content=b"{bad", headers=GOOD)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert (await c.post(url, json={"version": "v2", "nope": 1}, headers=GOOD)).status_code == 400
        v2 = checkpoint(tmp_path, "v2")
        r = await c.post(url, json={"version": "v2", "checkpoint": v2, "steps": [50, 10]}, headers=GOOD)
        assert r.status_code == 400 and r.json()["error"]["param"] == "steps", r.text
        assert (await c.post(url + "/pause", headers=GOOD)).status_code == 404  # nothing started
        assert (await c.post(url + "/explode", headers={"Authorization": "Bearer x"})).status_code == 401
        assert (await c.post(url + "/explode", headers=GOOD)).status_code == 404
        assert (await c.get("/admin/models/nope/rollout", headers=GOOD)).status_code == 404
        r = await c.post(url, json={"version": "v2", "checkpoint": v2, "interval_s": 5}, headers=GOOD)
        assert r.status_code == 201 and r.json()["phase"] == "registered" and r.json()["step_interval_s"] == 5
        assert (await c.post(url, json={"version": "v2"}, headers=GOOD)).status_code == 409  # one is live
        r = await c.post(url, json={"version": "v2", "checkpoint": str(tmp_path)}, headers=GOOD)
        assert r.status_code == 409 and r.json()["error"]["param"] == "checkpoint"


async def test_disabled_rollouts_answer_409_after_authentication(tmp_path):
    app = FastAPI()
    app.include_router(build_rollout_router(authenticate_admin, read_model, None, make_config(),
                                            {MODEL: checkpoint(tmp_path, "v1")}))

    @app.exception_handler(FleetserveError)
    async def _err(_req: Request, exc: FleetserveError):
        status, body, headers = http_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    async with client(app) as c:
        assert (await c.get(f"/admin/models/{MODEL}/rollout")).status_code == 401
        r = await c.get(f"/admin/models/{MODEL}/rollout", headers=GOOD)
        assert r.status_code == 409 and "canary.enabled" in r.json()["error"]["message"]

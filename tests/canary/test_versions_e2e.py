"""End to end: two versions of the tiny model behind one alias, on real Ray Serve (loopback),
driven with the official openai client and the admin REST API.

v2 is the tiny checkpoint with deterministically perturbed weights (so greedy outputs
differ), registered at runtime as its own Serve application; the split is set to 50/50 while
requests keep flowing. A third version whose checkpoint changes after registration is
blocked when its replica refuses it, and never takes traffic.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import pytest

from tests.fixtures.ray_serve import wait_for

pytestmark = pytest.mark.ray

PIN = "x-fleetserve-version"
ADMIN_KEY_HEADER = "x-fleetserve-admin-key"


def perturbed_copy(src: str, dst: Path, seed: int) -> str:
    """The checkpoint at ``src`` with seeded noise added to every weight (same shapes, same tokenizer)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(str(f))
        save_file({k: (t + 0.5 * torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)).contiguous()
                   for k, t in tensors.items()}, str(f), metadata={"format": "pt"})
    return str(dst)


@pytest.fixture(scope="module")
def admin(serve_app):
    return httpx.Client(base_url=serve_app.base_url, timeout=120,
                        headers={"Authorization": f"Bearer {serve_app.admin_key}"})


@pytest.fixture(scope="module")
def client(serve_app):
    from openai import OpenAI

    return OpenAI(base_url=serve_app.openai_base, api_key=serve_app.api_key, max_retries=0, timeout=120)


def served_by(client, model, user=None, headers=None, chat=False):
    """(version header, system_fingerprint, text) of one greedy request."""
    kw = dict(model=model, max_tokens=6, temperature=0, extra_headers=headers or {})
    if user:
        kw["user"] = user
    if chat:
        raw = client.chat.completions.with_raw_response.create(messages=[{"role": "user", "content": "hi"}], **kw)
        r = raw.parse()
        return raw.headers.get("x-fleetserve-version"), r.system_fingerprint, r.choices[0].message.content
    raw = client.completions.with_raw_response.create(prompt="def add(a, b):", **kw)
    r = raw.parse()
    return raw.headers.get("x-fleetserve-version"), r.system_fingerprint, r.choices[0].text


class Traffic:
    """Requests in a loop on a thread until stopped; counts failures."""

    def __init__(self, client, model):
        self.client, self.model = client, model
        self.ok, self.failed, self.errors = 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            try:
                served_by(self.client, self.model, user=f"bg{i % 7}")
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                self.failed += 1
                self.errors.append(repr(exc))
            i += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=180)


def wait_version(admin, model, version, want, timeout_s=300.0):
    def check():
        rows = admin.get(f"/admin/models/{model}/versions").json()["versions"]
        row = next(v for v in rows if v["version_id"] == version)
        return row["deployment"] == want or row["state"] == want

    wait_for(check, timeout_s, f"{model}@{version} to be {want}", interval_s=1.0)


def test_two_versions_split_pin_and_blocked(serve_app, client, admin, tmp_path_factory):
    model = serve_app.model
    root = tmp_path_factory.mktemp("versions")
    v2_path = perturbed_copy(serve_app.checkpoint, root / "v2", seed=2)
    with Traffic(client, model) as traffic:
        r = admin.post(f"/admin/models/{model}/versions", json={"version_id": "v2", "checkpoint": v2_path})
        assert r.status_code == 201, r.text
        wait_version(admin, model, "v2", "ready")
        r = admin.put(f"/admin/models/{model}/weights", json={"weights": {"v1": 1, "v2": 1}})
        assert r.status_code == 200, r.text
        wait_for(lambda: traffic.ok >= 10, 300, "background requests after the split")
    assert traffic.failed == 0, traffic.errors[:3]

    # sticky per user, both versions serve across users; header == fingerprint == model@version
    seen: dict[str, set] = {}
    for i in range(12):
        user = f"user-{i}"
        answers = {served_by(client, model, user=user, chat=bool(i % 2))[:2] for _ in range(2)}
        assert len(answers) == 1, answers
        header, fp = answers.pop()
        assert header == fp and fp in (f"{model}@v1", f"{model}@v2")
        seen.setdefault(fp, set()).add(user)
    assert set(seen) == {f"{model}@v1", f"{model}@v2"}, seen

    # the versions really differ (greedy), and the pin works for the admin key only
    admin_pin = {ADMIN_KEY_HEADER: serve_app.admin_key}
    t1 = served_by(client, model, headers={PIN: "v1", **admin_pin})
    t2 = served_by(client, model, headers={PIN: "v2", **admin_pin})
    assert t1[0] == f"{model}@v1" and t2[0] == f"{model}@v2" and t1[2] != t2[2]
    user_a = next(iter(seen[f"{model}@v1"]))
    assert served_by(client, model, user=user_a, headers={PIN: "v2"})[0] == f"{model}@v1"  # ignored

    # back to one version; v2 drained and removed
    assert admin.put(f"/admin/models/{model}/weights", json={"weights": {"v1": 1}}).status_code == 200
    assert admin.delete(f"/admin/models/{model}/versions/v2").status_code == 200

    # a checkpoint changed after registration: blocked, no weight, no traffic
    v3_path = Path(perturbed_copy(serve_app.checkpoint, root / "v3", seed=3))
    r = admin.post(f"/admin/models/{model}/versions", json={"version_id": "v3", "checkpoint": str(v3_path),
                                                             "deploy": False})
    assert r.status_code == 201
    weights = next(v3_path.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert admin.post(f"/admin/models/{model}/versions/v3/deploy").status_code == 200
    wait_version(admin, model, "v3", "blocked")
    row = next(v for v in admin.get(f"/admin/models/{model}/versions").json()["versions"] if v["version_id"] == "v3")
    assert "checksum mismatch" in row["blocked_reason"]
    assert admin.put(f"/admin/models/{model}/weights", json={"weights": {"v1": 1, "v3": 1}}).status_code == 400
    assert {served_by(client, model, user=f"user-{i}")[0] for i in range(6)} == {f"{model}@v1"}
    assert admin.delete(f"/admin/models/{model}/versions/v3").status_code == 200

"""Shared fixtures live in tests/fixtures/*.py and are loaded as pytest plugins."""

pytest_plugins = [
    "tests.fixtures.checkpoints",  # tiny HF checkpoints made on disk (engine)
    "tests.fixtures.adapters",  # tiny PEFT LoRA adapters for them (engine/lora)
    "tests.fixtures.redis_server",  # real redis-server on a free loopback port (tenants)
    "tests.fixtures.ray_serve",  # one shared Ray session + Serve apps (serving)
]

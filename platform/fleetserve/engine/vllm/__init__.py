"""fleetserve.engine.vllm"""

"""fleetserve.engine.core"""

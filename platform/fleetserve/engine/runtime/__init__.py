"""fleetserve.engine.runtime"""

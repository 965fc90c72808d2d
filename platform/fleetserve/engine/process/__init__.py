"""fleetserve.engine.process"""

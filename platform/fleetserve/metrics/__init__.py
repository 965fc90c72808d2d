"""fleetserve.metrics"""

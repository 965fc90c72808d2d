"""fleetserve.engine"""

"""fleetserve.cli"""

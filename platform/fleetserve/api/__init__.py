"""fleetserve.api"""

"""fleetserve.autoscaler"""

"""fleetserve.canary"""

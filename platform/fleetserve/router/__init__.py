"""fleetserve.router"""

"""fleetserve.deployments"""

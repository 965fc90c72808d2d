"""fleetserve.tenants"""

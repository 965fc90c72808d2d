"""fleetserve.application"""

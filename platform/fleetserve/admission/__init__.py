"""fleetserve.admission"""

"""Discrete-event fleet simulator: replay a trace against autoscaling policies."""

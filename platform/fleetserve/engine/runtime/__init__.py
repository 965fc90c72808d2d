"""CPU/OS tuning of the serving processes, kept apart from engine concepts; each module's first line names what it tunes and the measurement behind it."""

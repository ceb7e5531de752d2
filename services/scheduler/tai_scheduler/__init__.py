"""TAI Scheduler: tasks run exactly once at their time, across any number of replicas."""

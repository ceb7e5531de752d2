"""Test-only task executors, loaded by the Scheduler as plug-ins."""

"""TAI in one process: the services of the suite on one set of adapters (`tai-server`)."""

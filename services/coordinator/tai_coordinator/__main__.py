"""`python -m tai_coordinator` / `tai-coordinator`: runs the Coordinator until SIGTERM."""

from tai_coordinator.app import main

if __name__ == "__main__":
    main()

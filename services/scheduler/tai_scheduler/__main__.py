"""`python -m tai_scheduler` / `tai-scheduler`: runs the Scheduler until SIGTERM."""

from tai_scheduler.app import main

if __name__ == "__main__":
    main()

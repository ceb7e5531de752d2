"""`python -m tai_server` / `tai-server`: runs the suite in one process until SIGTERM."""

from tai_server.app import main

if __name__ == "__main__":
    main()

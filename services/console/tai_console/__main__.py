"""`python -m tai_console` / `tai-console`: serves the console until SIGTERM."""

from tai_console.server import main

if __name__ == "__main__":
    main()

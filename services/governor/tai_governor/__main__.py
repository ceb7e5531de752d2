"""`python -m tai_governor` / `tai-governor`: runs the Governor until SIGTERM."""

from tai_governor.app import main

if __name__ == "__main__":
    main()

"""atheris harness: the container target of fuzz/targets.py (see fuzz/run.py)."""

from harness import main

if __name__ == "__main__":
    main("container")

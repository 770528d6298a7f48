"""`python -m mldebug_ray`: the Hydra app."""

from mldebug_ray.app import main

if __name__ == "__main__":
    main()

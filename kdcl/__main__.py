"""`python -m kdcl ...` is `kdcl ...`: how torchrun starts it (torchrun --nproc_per_node=2 -m kdcl train ...)."""

from kdcl.cli import main

if __name__ == "__main__":
    main()

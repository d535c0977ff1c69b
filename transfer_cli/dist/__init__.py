"""Several processes, one run: torchrun's environment, collectives, the DDP/FSDP wrap and rank-0-only
writes (distributed.py), and `--nproc N`, which starts the same command in N processes (launch.py).
Import the modules themselves; neither imports torch at the top."""

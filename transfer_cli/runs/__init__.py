"""The run directory on disk, the only place a run writes: its layout and collision policy
(rundir.py), one command at a time per directory (runlock.py), step checkpoints with `last`/`best`
aliases (checkpoints.py) and the facts run.json records (provenance.py). Nothing here knows the
training loop; the layers above write through it."""

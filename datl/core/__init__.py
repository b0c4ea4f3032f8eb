"""What every layer of datl may use, and nothing else: errors (errors.py), files and
folders written the one safe way (files.py), option declarations and their checks
(options.py), how a command runs (cli.py: exit codes, signals, logging to the terminal),
forked pools (pool.py), progress bars (progress.py) and the model spec (specs.py).

Invariant: the core imports no other part of datl. errors.py, files.py, pool.py,
progress.py and specs.py import no third-party library but tqdm, so the manifest package
(the ground floor) can use them without importing click or torch.
"""

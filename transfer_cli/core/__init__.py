"""What every layer shares, and nothing that imports torch: the errors the CLI maps to exit codes
(errors.py), the one registry mechanism (registry.py), console output (console.py), the table
type it prints (tables.py) and work handed to a forked process (forked.py). This package
re-exports nothing: `transfer --help` loads only what it uses."""

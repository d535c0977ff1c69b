"""What every layer shares, and nothing that imports torch: the errors the CLI maps to exit codes
(errors.py), the one registry mechanism (registry.py), console output (console.py) and the table
type it prints (tables.py). This package re-exports nothing: `transfer --help` loads only what it
uses."""

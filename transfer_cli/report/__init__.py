"""What a run reports: the content of report.json (content.py), the headline table and metric labels
every report shares (headline.py), report.md (markdown.py), the pictures (plots.py), writing them
into the run directory (write.py), and `transfer compare` (compare.py)."""

"""What every layer uses: kdcl's errors and exit statuses, atomic file writes, metric names, plots,
tables and the cache shared by runs. Imports nothing else of kdcl's."""

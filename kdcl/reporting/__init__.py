"""What a run reports and what `kdcl report` compares: summary, report card, comparisons and their
statistics, hyper-parameter searches, sweep jobs' records, experiment trackers."""

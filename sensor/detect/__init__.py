"""Detection over records: Sigma rules, threshold windows, the window store."""

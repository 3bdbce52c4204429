"""The command line: replay, rules, run; the console script's entry point."""

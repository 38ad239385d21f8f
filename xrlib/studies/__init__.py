"""One folder per chapter: the configurations, tables and paper comparisons of each study."""

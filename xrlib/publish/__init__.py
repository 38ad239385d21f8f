"""The HTML book: papermill execution with a stage cache, generated pages, the README's generated section."""

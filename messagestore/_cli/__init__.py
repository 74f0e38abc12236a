"""The ``messagestore`` command line: demo, inspection, export and migrations."""

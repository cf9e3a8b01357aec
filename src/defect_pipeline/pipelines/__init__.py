"""Kedro pipelines: thin nodes that turn parameter blocks into typed configs and call the library."""

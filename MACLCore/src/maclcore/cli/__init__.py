"""The maclcore command line."""

"""(public names are re-exported here as the package grows)."""

"""mlserve.registry: versioned, checksummed model bundles with aliases (issue 3).

Not implemented yet; the package exists so that the wheel layout (mlserve.registry) is fixed.
"""

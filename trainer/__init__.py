"""mlserve.trainer: raw table -> fitted FeaturePlan -> torch model -> bundle (issue 3).

Not implemented yet; the package exists so that the wheel layout (mlserve.trainer) is fixed.
"""

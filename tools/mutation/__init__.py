"""The mutation gate's parts: the mutant list (`spec`), the runner and its pytest plugin."""

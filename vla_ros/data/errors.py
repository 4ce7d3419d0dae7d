"""The one error type of the dataset code: a bag or config that cannot become training data."""


class DatasetError(ValueError):
    """A bag (or set of bags) that cannot be turned into training data; says which and why."""

"""Joint training: the upper bound, every experience's data at once."""

from .base import Method, register_method
from clipbench.streams import LabelledImages


@register_method
class Joint(Method):
    """Joint training (the non-continual upper bound of ZSCL's and most CL tables).

    At the first experience the model trains on the union of every experience's training data,
    with every class active; later experiences train nothing. Rows 1..T of the accuracy matrix
    therefore all show the jointly trained model, and `last` is its accuracy.

    Departure: epochs are the suite's per-experience epochs, applied once to the union.
    """

    name = "joint"
    version = 1

    def training_data(self, streams, exp):
        return LabelledImages.concat(streams.train) if exp == 0 else None

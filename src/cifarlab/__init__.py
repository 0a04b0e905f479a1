"""cifarlab: run, compare and understand small CNN experiments on CIFAR-10 under tight budgets."""

__version__ = "0.1.0"

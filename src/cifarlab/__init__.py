"""cifarlab: run, compare and understand small CNN experiments on CIFAR-10 under tight budgets.

From Python (a notebook): `cifarlab.fit`, `cifarlab.layer_table`, `cifarlab.run_study` and
`cifarlab.write_report` (see cifarlab.api). They are imported on first use, so `import cifarlab` does not
load torch.
"""

__version__ = "0.1.0"

_API = ("fit", "layer_table", "run_study", "write_report")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from cifarlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cifarlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})

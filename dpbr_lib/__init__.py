"""DPBR: combining data privacy and Byzantine resilience in distributed machine learning.

Modules, one job each:

- :mod:`dpbr_lib.aggregators` robust aggregation rules and pre-aggregation, with VN bounds
- :mod:`dpbr_lib.attacks`     Byzantine gradient generators
- :mod:`dpbr_lib.privacy`     clipping, Gaussian mechanism, sparsification, accounting
- :mod:`dpbr_lib.theory`      closed-form bounds for the theory chapter
- :mod:`dpbr_lib.data`, :mod:`dpbr_lib.models`  data sets and networks
- :mod:`dpbr_lib.training`    simulated distributed DP-SGD, one run -> one result record
- :mod:`dpbr_lib.sweep`       experiment grids with a resumable cache and executors
- :mod:`dpbr_lib.inversion`   gradient inversion attacks (DLG, iDLG, Inverting Gradients)
- :mod:`dpbr_lib.plots`, :mod:`dpbr_lib.widgets`  figures and offline-live widgets
"""

__version__ = "0.1.0"

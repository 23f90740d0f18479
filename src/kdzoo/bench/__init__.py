"""Speed benchmarks: kdzoo's training step against the conventional loop of the other zoos.

:mod:`kdzoo.bench.conventional` re-creates how RepDistiller, mdistiller and the reference zoo
train (per-image PIL augmentation through a DataLoader, NCHW eager models, a host sync every
step); :mod:`kdzoo.bench.measure` holds the measuring tools (matmul peak, FLOP counts, an
interleaved timer) so both sides are timed the same way in one process.
"""

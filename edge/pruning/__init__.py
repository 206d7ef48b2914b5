"""Pruning before training: `scorers` (LNPT and baselines behind one interface), `masks` (top-k to a
target sparsity, applied with torch.nn.utils.prune), `structured` (channel pruning with Torch-Pruning),
`report`, `pipeline` and `cli` (`lnpt prune`)."""

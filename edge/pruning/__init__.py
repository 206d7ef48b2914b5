"""Pruning before training: `scorers` (LNPT and baselines behind one interface), `masks` (top-k to a
target sparsity, applied with torch.nn.utils.prune), `structured` (channel pruning with Torch-Pruning),
`report`, `teacher_source` (a teacher file or a guidance server), `pipeline` and `cli` (`lnpt prune`)."""

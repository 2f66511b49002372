"""Task adapters, one folder per task family: the task class, its protocols, its dataset loader, its mini set,
its metrics, its plots and the heads only it uses. :mod:`dfbench.tasks.base` is the contract every task, built-in
or third-party, implements; what several tasks share (the nearest-neighbour matcher, the pixel bank) lives in
:mod:`dfbench.heads`."""

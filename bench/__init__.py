"""`make bench`: what the security layer costs, measured.

`python -m bench` starts the whole stack in a temporary STATE_DIR, a bare
Orthanc (no plugin) and a second nginx for the baselines, loads a generated
CT study, drives load with wrk from separate processes on loopback and writes
docs/BENCHMARKS.md. Not part of `make test`.
"""

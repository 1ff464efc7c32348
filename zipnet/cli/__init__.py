"""zipnet's five commands, each a module here (`python -m zipnet.cli.NAME` runs it too):

zipnet-train      train.py      the Hydra app: one run, a grid, or a study (-m)
zipnet-sweep      sweep.py      a study file run through the same sweeper
zipnet-report     report.py     leaderboards, per-factor effects and figures from the MLflow store
zipnet-reproduce  reproduce.py  a run or a study's best rebuilt from its recorded config, and verified
zipnet-storage-proxy  storage_proxy.py  Optuna's gRPC storage proxy in front of a study storage (grpc://)
"""

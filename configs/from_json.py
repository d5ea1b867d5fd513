"""A workdir's saved config as a config file: ``--config=WORKDIR/config.json`` (the command line
turns that into ``--config=configs/from_json.py:WORKDIR/config.json``). It is the resolved config
the run was trained with, every key and value, so the same run can be resumed, sampled or
evaluated without the .py file it came from; ``--config.*`` overrides apply as usual."""

import json

import ml_collections


def get_config(path: str):
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))

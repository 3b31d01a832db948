# Writes .pt files cleave must refuse (each with valid cleave metadata): a traced module with
# dropout, a frozen one, one whose output is not its metadata's cut shape, and one that does not
# take the data's shape. Usage: bad_halves.py OUT_DIR
import json
import os
import sys

import torch
import torch.nn as nn


def save(module, path, input_shape, cut_shape):
    meta = {"half": "bottom", "input_shape": input_shape, "cut_shape": cut_shape, "classes": 2,
            "split_id": "bad-halves"}
    module.save(path, _extra_files={"cleave.json": json.dumps(meta)})


out = sys.argv[1]
torch.manual_seed(0)
with_dropout = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5))
save(torch.jit.trace(with_dropout.eval(), torch.randn(2, 64)), os.path.join(out, "traced.pt"),
     [64], [16])
frozen = torch.jit.freeze(torch.jit.script(nn.Sequential(nn.Linear(64, 16))).eval())
save(frozen, os.path.join(out, "frozen.pt"), [64], [16])
save(torch.jit.script(nn.Sequential(nn.Linear(64, 16))), os.path.join(out, "wide.pt"), [64], [8])
save(torch.jit.script(nn.Sequential(nn.Linear(32, 16))), os.path.join(out, "narrow.pt"), [32],
     [16])

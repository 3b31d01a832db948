#!/usr/bin/env python3
"""Cut a PyTorch model into the TorchScript parts that cleave trains.

cleave-client --bottom bottom.pt runs the first part of the model on a hospital's data;
cleave-server --top top.pt runs the rest. With --tail-layers N (U-shaped split learning,
--config u-shaped on both ends) the model's last N top-level children become a third part,
tail.pt, that the hospital runs after the server's middle (top.pt), so the labels never leave it:
cleave-client --bottom bottom.pt --tail tail.pt, cleave-server --top top.pt. This tool takes your nn.Module, cuts it between two of
its top-level children, scripts both halves with torch.jit.script (not torch.jit.trace: a trace
fixes dropout and batch-norm in one mode), checks that top(bottom(x)) equals model(x) on a random
batch (tail(top(bottom(x))) with a tail), and writes the parts with the metadata cleave checks
(input shape, cut shape, classes, split id; U-shaped: middle shape and tail layers) in an extra
file named cleave.json.

The model's forward must call its top-level children in order (an nn.Sequential does; so does a
ResNet-style class whose skip connections live inside its blocks). Work done in forward outside
the children (say torch.flatten between two of them) is caught by the check: wrap it in a module
(nn.Flatten) or cut elsewhere.

Example:
  python3 cleave_export.py --model my_model.py:SmallResNet --input-shape 1x28x28 --cut stem \\
      --out-dir halves
  python3 cleave_export.py --model my_model.py:build --kwargs '{"width": 32}' \\
      --input-shape 30 --cut 2
  python3 cleave_export.py --model my_model.py:SmallResNet --input-shape 1x28x28 --cut stem \\
      --tail-layers 1 --out-dir parts    # U-shaped: bottom.pt, top.pt (middle), tail.pt

Exit codes: 0 written, 2 bad arguments or a model that cannot be cut or scripted as asked.
Needs PyTorch (Debian: apt-get install python3-torch).
"""

import argparse
import collections
import hashlib
import importlib.util
import json
import os
import sys


class ExportError(Exception):
    """A problem the user can fix: reported as one line, exit code 2."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="cleave_export.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, metavar="FILE.py:NAME",
        help="NAME in FILE.py: an nn.Module subclass (constructed with --kwargs), an nn.Module "
             "instance (such as an nn.Sequential), or a function that returns one")
    parser.add_argument("--kwargs", default="{}", metavar="JSON",
                        help="keyword arguments for NAME when it is a class or a function "
                             "(default: none)")
    parser.add_argument(
        "--cut", required=True, metavar="N|CHILD",
        help="where the client's half ends: a number N (the first N top-level children run on "
             "the client, 1..children-1) or the name of the last top-level child that does")
    parser.add_argument("--input-shape", required=True, metavar="SHAPE",
                        help="one input sample without the batch dimension, e.g. 1x28x28 or 30")
    parser.add_argument("--classes", type=int,
                        help="number of classes; checked against the model's output size "
                             "(default: the output size)")
    parser.add_argument("--out-dir", default=".", help="where to write (default: .)")
    parser.add_argument("--bottom", default="bottom.pt",
                        help="file name of the client's half (default: bottom.pt)")
    parser.add_argument("--top", default="top.pt",
                        help="file name of the server's half (default: top.pt)")
    parser.add_argument("--tail-layers", type=int, default=0, metavar="N",
                        help="U-shaped: the model's last N top-level children form a third part "
                             "that the hospital runs after the server's middle (default: 0, no "
                             "tail: two halves for vanilla or vertical)")
    parser.add_argument("--tail", default="tail.pt",
                        help="file name of the client's tail with --tail-layers (default: "
                             "tail.pt)")
    parser.add_argument("--split-id",
                        help="id every part carries, compared at Join (default: a digest of the "
                             "parts' code, parameter shapes and the shapes above)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and the check batch (default: 0)")
    parser.add_argument("--check-batch", type=int, default=4,
                        help="samples in the random batch of the check (default: 4)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest allowed |top(bottom(x)) - model(x)| (default: 1e-5)")
    return parser.parse_args(argv)


def parse_shape(text):
    try:
        shape = [int(part) for part in text.split("x")]
    except ValueError:
        shape = []
    if not shape or any(size <= 0 for size in shape):
        raise ExportError(f"bad --input-shape '{text}' (expected positive sizes like 1x28x28)")
    return shape


def load_model(spec, kwargs_text):
    import torch.nn as nn
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ExportError(f"--model '{spec}' is not FILE.py:NAME")
    if not os.path.isfile(path):
        raise ExportError(f"--model: no file '{path}'")
    try:
        kwargs = json.loads(kwargs_text)
    except json.JSONDecodeError as error:
        raise ExportError(f"--kwargs is not JSON: {error}") from None
    if not isinstance(kwargs, dict):
        raise ExportError("--kwargs must be a JSON object")
    module_name = os.path.splitext(os.path.basename(path))[0]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    loader = importlib.util.spec_from_file_location(module_name, path)
    source = importlib.util.module_from_spec(loader)
    # torch.jit.script reads class sources through the module: it must be registered.
    sys.modules[module_name] = source
    loader.loader.exec_module(source)
    if not hasattr(source, name):
        raise ExportError(f"'{path}' has no '{name}'")
    target = getattr(source, name)
    if isinstance(target, nn.Module):
        if kwargs:
            raise ExportError(f"'{name}' is a module instance: --kwargs does not apply")
        return target
    if not callable(target):
        raise ExportError(f"'{name}' in '{path}' is neither an nn.Module nor callable")
    model = target(**kwargs)
    if not isinstance(model, nn.Module):
        raise ExportError(f"'{name}(**kwargs)' returned a {type(model).__name__}, not an "
                          "nn.Module")
    return model


def cut_index(children, cut):
    names = [name for name, _ in children]
    if len(names) < 2:
        raise ExportError(f"the model has {len(names)} top-level child(ren); a cut needs two "
                          "or more")
    if cut.isdigit():
        index = int(cut)
        if not 1 <= index < len(names):
            raise ExportError(f"--cut {cut} is outside 1..{len(names) - 1} (the model's "
                              f"top-level children: {', '.join(names)})")
        return index
    if cut not in names:
        raise ExportError(f"--cut '{cut}' is not a top-level child (they are: "
                          f"{', '.join(names)})")
    index = names.index(cut) + 1
    if index == len(names):
        raise ExportError(f"--cut '{cut}' is the last child: the server would have nothing to run")
    return index


def split(model, cut, tail_layers=0):
    """The model's top-level children as [bottom, top] or, with a tail, [bottom, top, tail]."""
    import torch.nn as nn
    children = list(model.named_children())
    index = cut_index(children, cut)
    if tail_layers < 0:
        raise ExportError(f"--tail-layers must be 0 or more, got {tail_layers}")
    tail_from = len(children) - tail_layers
    if tail_layers and tail_from <= index:
        raise ExportError(f"--tail-layers {tail_layers} after --cut {cut} leaves the server no "
                          f"middle (the model has {len(children)} top-level children: "
                          f"{', '.join(n for n, _ in children)})")
    bounds = [(0, index), (index, tail_from)] + ([(tail_from, len(children))] if tail_layers else [])
    parts = [nn.Sequential(collections.OrderedDict(children[a:b])) for a, b in bounds]
    for part, name in zip(parts, PART_NAMES):
        if not any(True for _ in part.parameters()):
            raise ExportError(f"the {name} part ({', '.join(n for n, _ in part.named_children())})"
                              " has no parameters to train: cut elsewhere")
    return parts


PART_NAMES = ("bottom", "top", "tail")


def script(half, name):
    import torch
    try:
        return torch.jit.script(half)
    except Exception as error:  # torch.jit.frontend errors have no common base class
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"cannot script the {name} half with torch.jit.script: {first}") from None


def run_parts(parts, x):
    """Every part's output in turn: [cut, logits] or [cut, middle output, logits]."""
    outputs = []
    for part in parts:
        x = part(x)
        outputs.append(x)
    return outputs


def check_equal(model, parts, x, tolerance):
    import torch
    for module in [model] + list(parts):
        module.eval()
    with torch.no_grad():
        try:
            whole = model(x)
            outputs = run_parts(parts, x)
        except Exception as error:
            first = str(error).strip().splitlines()[0]
            raise ExportError(f"the model fails on a batch of shape {list(x.shape)}: "
                              f"{first}") from None
    composed = "tail(top(bottom(x)))" if len(parts) == 3 else "top(bottom(x))"
    halves = outputs[-1]
    if not isinstance(whole, torch.Tensor) or whole.dim() != 2:
        raise ExportError("the model must return one tensor of logits [batch, classes], got "
                          f"{getattr(whole, 'shape', type(whole).__name__)}")
    if halves.shape != whole.shape:
        raise ExportError(f"{composed} has shape {list(halves.shape)} but the model gives "
                          f"{list(whole.shape)}: its forward does more than call its top-level "
                          "children in order; wrap that work in modules or cut elsewhere")
    difference = (halves - whole).abs().max().item()
    if not difference <= tolerance:
        raise ExportError(f"{composed} differs from the model by up to {difference:.3g} "
                          f"(> {tolerance:g}): its forward does more than call its top-level "
                          "children in order (e.g. a skip connection across the cut, or "
                          "torch.flatten between children); wrap that work in modules or cut "
                          "elsewhere")
    return outputs, whole, difference


def digest(parts, shapes):
    fields = {name: [part.code, [(n, list(t.shape)) for n, t in part.state_dict().items()]]
              for name, part in zip(PART_NAMES, parts)}
    fields["shapes"] = shapes
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def metadata(args, shape, outputs, classes, scripted):
    meta = {"input_shape": shape, "cut_shape": list(outputs[0].shape[1:]), "classes": classes}
    if args.tail_layers:
        meta["middle_shape"] = list(outputs[1].shape[1:])
        meta["tail_layers"] = args.tail_layers
    meta["split_id"] = args.split_id or digest(scripted, meta)
    if not 1 <= len(meta["split_id"]) <= 64:
        raise ExportError("--split-id must be 1..64 characters")
    return meta


def write_parts(args, scripted, meta):
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    for part, name, file_name in zip(scripted, PART_NAMES, (args.bottom, args.top, args.tail)):
        part.train()  # cleave sets the mode itself; saved in training mode like a fresh model
        path = os.path.join(args.out_dir, file_name)
        part.save(path, _extra_files={"cleave.json": json.dumps(dict(meta, half=name))})
        count = sum(p.numel() for p in part.parameters())
        written.append(f"{path} ({count} parameters)")
    return written


def export(args):
    import torch
    shape = parse_shape(args.input_shape)
    if args.check_batch < 1:
        raise ExportError("--check-batch must be at least 1")
    torch.manual_seed(args.seed)
    model = load_model(args.model, args.kwargs)
    parts = split(model, args.cut, args.tail_layers)
    x = torch.randn([args.check_batch] + shape)
    outputs, whole, _ = check_equal(model, parts, x, args.tolerance)
    classes = whole.shape[1]
    if args.classes is not None and args.classes != classes:
        raise ExportError(f"--classes {args.classes}, but the model gives {classes} outputs")
    if classes < 2:
        raise ExportError(f"the model gives {classes} output(s); cleave needs 2 or more classes")
    scripted = [script(part, name) for part, name in zip(parts, PART_NAMES)]
    _, _, difference = check_equal(model, scripted, x, args.tolerance)
    meta = metadata(args, shape, outputs, classes, scripted)
    written = write_parts(args, scripted, meta)
    size = lambda dims: "x".join(str(d) for d in dims)
    middle = f" -> middle {size(meta['middle_shape'])}" if args.tail_layers else ""
    composed = "tail(top(bottom(x)))" if args.tail_layers else "top(bottom(x))"
    print(f"wrote {' and '.join(written)}: input {size(shape)} -> cut "
          f"{size(meta['cut_shape'])}{middle} -> {classes} classes, split id "
          f"{meta['split_id']}; {composed} matches the model (largest difference "
          f"{difference:.2g})")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("cleave_export.py: error: PyTorch is not installed (Debian: apt-get install "
              "python3-torch)", file=sys.stderr)
        return 2
    try:
        export(args)
    except ExportError as error:
        print(f"cleave_export.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
